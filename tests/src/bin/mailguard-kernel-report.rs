//! What the kernels tier reports of the kernel it runs on, as one line of JSON: the release,
//! the optional features mailguard does without there, and for each program the instructions
//! the verifier processed (Linux 5.16 and later report them) with the time the whole load
//! took. When mailguard cannot work on the kernel, `refused` holds the message `run` gives,
//! and the exit code is 1.

use std::time::Instant;

use mailguard::{config::Config, kernel::features::KernelFeatures, kernel::guard::Guard};
use serde_json::{Value, json};

fn main() {
    let kernel = KernelFeatures::probed();
    let mut report = json!({
        "release": kernel.release,
        "degraded": kernel.degraded,
    });
    if let Err(refused) = kernel.check() {
        report["refused"] = Value::from(refused.to_string());
        println!("{report}");
        std::process::exit(1);
    }
    let started = Instant::now();
    match Guard::load(&Config::default()) {
        Ok(guard) => {
            report["load_ms"] = Value::from(started.elapsed().as_millis() as u64);
            let mut programs = serde_json::Map::new();
            for (name, n) in guard.verified_by_program().unwrap_or_default() {
                programs.insert(name.to_string(), n.map_or(Value::Null, Value::from));
            }
            report["programs"] = Value::Object(programs);
            println!("{report}");
        }
        Err(e) => {
            // The verifier's log can be megabytes: its last lines say why.
            let text = e.to_string();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            report["load_error"] =
                Value::from(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            println!("{report}");
            std::process::exit(1);
        }
    }
}
