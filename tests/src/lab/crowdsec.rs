//! CrowdSec's Local API in the lab: Debian's `crowdsec` without its agent and without the
//! Central API (`-no-cs -no-capi`), its configuration and SQLite database in the lab directory,
//! listening on the LAPI host's address only; `cscli` beside it with the same configuration.
//! Bouncer keys and machine credentials are made with `cscli`, as an operator makes them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::tls::LabCa;
use crate::netns::Netns;

/// The LAPI's port on the LAPI host.
pub const LAPI_PORT: u16 = 8080;

pub struct CrowdsecLapi {
    child: Option<Child>,
    ns_path: String,
    pub dir: PathBuf,
    listen: String,
    /// HTTPS, with a certificate of the lab's CA (whose certificate cscli is given).
    tls: Option<LabCa>,
}

impl CrowdsecLapi {
    /// Starts the LAPI listening on `listen_ip`; with `tls`, serving HTTPS with its certificate.
    pub fn start(ns: &Netns, dir: &Path, listen_ip: &str, tls: Option<LabCa>) -> CrowdsecLapi {
        fs::create_dir_all(dir.join("data")).expect("crowdsec directory");
        let d = dir.display();
        for file in ["profiles.yaml", "simulation.yaml"] {
            let from = Path::new("/etc/crowdsec").join(file);
            fs::copy(&from, dir.join(file)).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (Debian package crowdsec; `cargo xtask setup` installs it)",
                    from.display()
                )
            });
        }
        let listen = format!("{listen_ip}:{LAPI_PORT}");
        let tls_config = tls.as_ref().map_or(String::new(), |t| {
            format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n",
                t.cert.display(),
                t.key.display()
            )
        });
        let config = format!(
            "common:
  daemonize: false
  log_media: file
  log_dir: {d}/
  log_level: info
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: json
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
  flush:
    max_items: 1000000
    max_age: 7d
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: {listen}
    profiles_path: {d}/profiles.yaml
    trusted_ips:
      - {listen_ip}
{tls_config}prometheus:
  enabled: false
"
        );
        fs::write(dir.join("config.yaml"), config).expect("crowdsec config");
        let mut lapi = CrowdsecLapi {
            child: None,
            ns_path: ns.path(),
            dir: dir.to_path_buf(),
            listen,
            tls,
        };
        // The machine cscli speaks to the LAPI as (decisions add and delete go through it).
        let out = lapi.cscli(&[
            "machines",
            "add",
            "lab-cscli",
            "--password",
            "lab-cscli-password",
            "-f",
            &format!("{d}/local_api_credentials.yaml"),
            "--url",
            &lapi.url(),
        ]);
        assert!(
            out.status.success(),
            "cscli machines add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lapi.run();
        lapi
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        if let Some(t) = &self.tls {
            // cscli (Go) trusts the lab's CA through the file Go reads its roots from.
            c.env("SSL_CERT_FILE", &t.ca);
        }
        c.arg(format!("--net={}", self.ns_path))
            .arg("--")
            .arg(program);
        c
    }

    /// Starts the LAPI process and waits until it answers.
    fn run(&mut self) {
        let mut cmd = self.command("crowdsec");
        cmd.arg("-c")
            .arg(self.dir.join("config.yaml"))
            .args(["-no-cs", "-no-capi"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("start crowdsec (Debian package crowdsec)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cscli(&["lapi", "status"]);
            if out.status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("crowdsec exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the LAPI not ready after 30 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the LAPI (SIGTERM to the process the lab started); its database stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::end_child(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts the LAPI again over the same database.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// The LAPI's base URL, as mailguard's `lapi_url` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.listen)
    }

    /// Runs `cscli` with the lab LAPI's configuration, in the LAPI host's namespace.
    pub fn cscli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("cscli");
        cmd.arg("-c").arg(self.dir.join("config.yaml")).args(args);
        cmd.output().expect("run cscli (Debian package crowdsec)")
    }

    /// `cscli` that must succeed; its standard output.
    pub fn cscli_ok(&self, args: &[&str]) -> String {
        let out = self.cscli(args);
        assert!(
            out.status.success(),
            "cscli {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new bouncer's key (`cscli bouncers add NAME`), written to `file` for mailguard.
    pub fn bouncer_key(&self, name: &str, file: &Path) -> String {
        let key = self
            .cscli_ok(&["bouncers", "add", name, "-o", "raw"])
            .trim()
            .to_string();
        assert!(!key.is_empty(), "cscli printed no bouncer key");
        fs::write(file, format!("{key}\n")).expect("write the bouncer key");
        key
    }

    /// A new machine (`cscli machines add NAME --password ...`), its password written to
    /// `file` for mailguard.
    pub fn machine(&self, name: &str, file: &Path) {
        let password = format!("{name}-password-{}", std::process::id());
        let credentials = self.dir.join(format!("machine-{name}.yaml"));
        self.cscli_ok(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "-f",
            credentials.to_str().expect("path"),
        ]);
        fs::write(file, format!("{password}\n")).expect("write the machine's password");
    }

    /// The LAPI's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("crowdsec_api.log")).unwrap_or_default()
            + &fs::read_to_string(self.dir.join("crowdsec.log")).unwrap_or_default()
    }
}

impl Drop for CrowdsecLapi {
    fn drop(&mut self) {
        self.stop();
    }
}
