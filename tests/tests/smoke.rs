//! The smoke test the kernels tier runs inside each Debian kernel it boots (`cargo xtask test`
//! runs it on the host too): the real `mailguard` binary attached to a veth in the lab, a mail
//! delivery through a real Postfix passes, a private port is dropped, `status` says so, and
//! `unload` removes everything. Each step prints its result and the time since the test began
//! (under QEMU without KVM, where a slow step shows).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use guard_tests::lab::{Lab, MAIL_IFACE, MAIL4, MAIL6, PRIVATE_PORTS, addr, swaks, tcp_connects};

const CONFIG: &str = r#"
interface = "mg-mail0"
mail_ports = [25, 465, 587, 110, 995, 143, 993]

[[open_ports]]
port = 22
"#;

/// When the test began.
static STARTED: OnceLock<Instant> = OnceLock::new();

fn step(what: &str) {
    let at = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("smoke: {what}: ok ({at:.1} s)");
}

#[test]
fn mail_passes_a_private_port_is_dropped_then_unload_removes_it() {
    STARTED.get_or_init(Instant::now);
    let private = PRIVATE_PORTS[0];
    let mut lab = Lab::create();
    step("the lab's namespaces and links made");
    lab.start_services();
    step("Postfix and the listeners started");
    assert!(
        tcp_connects(&lab.client.ns, addr(MAIL4, private), Duration::from_secs(5)),
        "lab: port {private} unreachable before mailguard"
    );
    step(&format!("port {private} reachable before mailguard"));

    lab.start_mailguard(CONFIG, &[]);
    let mg = lab.mailguard();
    let status = mg.status();
    assert_eq!(status["interface"], MAIL_IFACE, "status: {status}");
    step(&format!(
        "attached to {MAIL_IFACE} ({} mode), program id {}",
        status["mode"], status["program_id"]
    ));

    let postfix = lab.postfix.as_ref().expect("postfix");
    for server in [MAIL4, MAIL6] {
        let subject = format!("smoke delivery to {server}");
        swaks(&lab.client.ns, server, 25, &subject).unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert!(
            postfix.wait_delivered(&subject, Duration::from_secs(30)),
            "`{subject}` accepted but not delivered; maillog:\n{}",
            postfix.maillog()
        );
        step(&format!("mail delivered to {server}:25 through mailguard"));
    }

    for server in [MAIL4, MAIL6] {
        assert!(
            !tcp_connects(
                &lab.client.ns,
                addr(server, private),
                Duration::from_secs(3)
            ),
            "port {private} of {server} reachable through mailguard"
        );
        step(&format!("port {private} of {server} dropped"));
    }

    let mail_new = mg.count("mail_new");
    let dropped = mg.count("tcp_not_allowed");
    assert!(
        mail_new >= 2,
        "status counts {mail_new} new mail connections"
    );
    assert!(dropped >= 2, "status counts {dropped} dropped SYNs");
    assert_eq!(
        mg.count("internal"),
        0,
        "the program could not read its scratch slot"
    );
    step(&format!(
        "status: mail_new {mail_new}, tcp_not_allowed {dropped}"
    ));

    let mg = lab.mailguard.take().expect("mailguard");
    let pins = mg.pin_dir.clone();
    let out = mg.unload();
    assert!(
        out.status.success(),
        "unload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "pins left at {}", pins.display());
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", MAIL_IFACE]).stdout)
            .to_string();
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    assert!(
        tcp_connects(&lab.client.ns, addr(MAIL4, private), Duration::from_secs(5)),
        "port {private} unreachable after unload"
    );
    step(&format!(
        "unload: pins gone, XDP detached, port {private} reachable again"
    ));
}
