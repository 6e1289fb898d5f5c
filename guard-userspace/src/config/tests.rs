//! The configuration file's parsing and validation.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "t.toml")
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

#[test]
fn empty_file_gives_safe_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.mail_ports, vec![25, 110, 143, 465, 587, 993, 995]);
    assert_eq!(
        c.open_ports,
        vec![OpenPort {
            port: 22,
            protocol: Protocol::Tcp,
            from: vec![]
        }]
    );
    assert_eq!(c.icmp_echo, EchoPolicy::Allow);
    assert!(!c.monitor);
    assert!(c.warnings().is_empty());
}

#[test]
fn full_file_parses() {
    let c = parse(
        r#"
interface = "eth0"
attach_mode = "skb"
monitor = true
icmp_echo = "drop"
mail_ports = [25, 587]

[[open_ports]]
port = 22
from = ["198.18.0.0/15", "2001:db8::/32", "198.19.0.7"]

[[open_ports]]
port = 51820
protocol = "udp"
"#,
    )
    .unwrap();
    assert_eq!(c.interface.as_deref(), Some("eth0"));
    assert_eq!(c.attach_mode, AttachMode::Skb);
    assert!(c.monitor);
    assert_eq!(c.icmp_echo, EchoPolicy::Drop);
    assert_eq!(c.mail_ports, vec![25, 587]);
    assert_eq!(c.open_ports.len(), 2);
    assert_eq!(c.open_ports[0].from.len(), 3);
    assert_eq!(c.open_ports[0].from[2].to_string(), "198.19.0.7/32");
    assert_eq!(c.open_ports[1].protocol, Protocol::Udp);
}

#[test]
fn syntax_error_names_line_and_column() {
    let e = parse("monitor = false\nmail_ports = [25,, 587]\n").unwrap_err();
    assert!(e.starts_with("t.toml:2:"), "{e}");
    assert!(e.contains("`mail_ports`"), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = parse("\n\nmonitor = \"yes\"\n").unwrap_err();
    assert!(e.starts_with("t.toml:3:11:"), "{e}");
    assert!(e.contains("`monitor`"), "{e}");
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let e = parse("monitor = false\nmail_port = [25]\n").unwrap_err();
    assert!(e.starts_with("t.toml:2:1:"), "{e}");
    assert!(e.contains("mail_port"), "{e}");
}

#[test]
fn bad_enum_value_is_refused() {
    let e = parse("attach_mode = \"fast\"\n").unwrap_err();
    assert!(e.contains("t.toml:1:15"), "{e}");
    assert!(
        e.contains("auto") && e.contains("native") && e.contains("skb"),
        "{e}"
    );
    let e = parse("icmp_echo = \"maybe\"\n").unwrap_err();
    assert!(e.contains("allow") && e.contains("drop"), "{e}");
}

#[test]
fn port_out_of_range_names_element() {
    let e = parse("mail_ports = [25, 70000]\n").unwrap_err();
    assert_eq!(
        e,
        "t.toml:1:19: `mail_ports[1]`: 70000 is not a port number (1 to 65535)"
    );
    let e = parse("mail_ports = [0]\n").unwrap_err();
    assert!(e.contains("0 is not a port number"), "{e}");
    let e = parse("[[open_ports]]\nport = -1\n").unwrap_err();
    assert_eq!(
        e,
        "t.toml:2:8: `open_ports[0].port`: -1 is not a port number (1 to 65535)"
    );
}

#[test]
fn duplicate_and_conflicting_ports_are_refused() {
    let e = parse("mail_ports = [25, 587, 25]\n").unwrap_err();
    assert_eq!(e, "t.toml:1:24: `mail_ports[2]`: port 25 is listed twice");
    let e = parse("mail_ports = [25]\n[[open_ports]]\nport = 25\n").unwrap_err();
    assert!(
        e.starts_with("t.toml:3:8: `open_ports[0].port`: port 25/tcp is already a mail port"),
        "{e}"
    );
    // UDP 25 is not a mail port: no conflict.
    parse("mail_ports = [25]\n[[open_ports]]\nport = 25\nprotocol = \"udp\"\n").unwrap();
    let e = parse("[[open_ports]]\nport = 22\n[[open_ports]]\nport = 22\n").unwrap_err();
    assert!(
        e.contains("`open_ports[1]`: port 22/tcp is opened twice"),
        "{e}"
    );
}

#[test]
fn bad_cidrs_name_their_place() {
    let cases = [
        (
            "198.18.0.1/24",
            "`198.18.0.1/24` has host bits set; did you mean `198.18.0.0/24`?",
        ),
        (
            "198.18.0.0/33",
            "prefix length `/33` in `198.18.0.0/33` is not 0 to 32",
        ),
        (
            "2001:db8::/129",
            "prefix length `/129` in `2001:db8::/129` is not 0 to 128",
        ),
        (
            "2001:db8::1/32",
            "`2001:db8::1/32` has host bits set; did you mean `2001:db8::/32`?",
        ),
        (
            "198.18.0/24",
            "`198.18.0` in `198.18.0/24` is not an IPv4 or IPv6 address",
        ),
        (
            "mail.example",
            "`mail.example` is not an IP address or CIDR",
        ),
        (
            "198.18.0.0/x",
            "prefix length `/x` in `198.18.0.0/x` is not 0 to 32",
        ),
    ];
    for (cidr, message) in cases {
        let text = format!("[[open_ports]]\nport = 22\nfrom = [\"198.19.0.0/16\", \"{cidr}\"]\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e,
            format!("t.toml:3:26: `open_ports[0].from[1]`: {message}"),
            "{cidr}"
        );
    }
}

#[test]
fn bad_interface_names_are_refused() {
    for name in ["", "a/b", "this-name-is-far-too-long", "eth 0"] {
        let e = parse(&format!("interface = \"{name}\"\n")).unwrap_err();
        assert!(e.starts_with("t.toml:1:13: `interface`:"), "{e}");
    }
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let e = Config::load(Path::new("/nonexistent/mailguard.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/mailguard.toml"), "{e}");
}

#[test]
fn metrics_listen_address() {
    assert_eq!(
        parse("").unwrap().metrics_listen,
        Some("127.0.0.1:9477".parse().unwrap())
    );
    assert_eq!(
        parse("[metrics]\nlisten = \"\"\n").unwrap().metrics_listen,
        None
    );
    assert_eq!(
        parse("[metrics]\nlisten = \"[::1]:9100\"\n")
            .unwrap()
            .metrics_listen,
        Some("[::1]:9100".parse().unwrap())
    );
    let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
    assert!(
        e.starts_with("t.toml:2:10: `metrics.listen`: `localhost` is not an address"),
        "{e}"
    );
}

#[test]
fn warns_when_ssh_would_be_dropped() {
    let (_, w) = Config::parse("open_ports = []\n", "t").unwrap();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].0.contains("SSH (22/tcp) is not in open_ports"),
        "{}",
        w[0]
    );
    let (_, w) = Config::parse(
        "[[open_ports]]\nport = 22\nfrom = [\"198.18.0.0/15\"]\n",
        "t",
    )
    .unwrap();
    assert!(w[0].0.contains("only accepts 198.18.0.0/15"), "{}", w[0]);
}

#[test]
fn ipv4_mapped_sources_are_taken_as_ipv4() {
    assert_eq!(
        parse_cidr("::ffff:198.51.100.7").unwrap(),
        "198.51.100.7/32".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        parse_cidr("::ffff:198.51.100.0/120").unwrap(),
        "198.51.100.0/24".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        parse_cidr("::ffff:0:0/96").unwrap(),
        "0.0.0.0/0".parse::<IpNet>().unwrap()
    );
    // Not mapped: stays IPv6.
    assert!(parse_cidr("2001:db8::/32").unwrap().addr().is_ipv6());
}

#[test]
fn prefix_lengths_are_plain_numbers() {
    for bad in [
        "198.18.0.0/+24",
        "198.18.0.0/024",
        "198.18.0.0/ 24",
        "2001:db8::/064",
    ] {
        let err = parse_cidr(bad).unwrap_err();
        assert!(err.contains("prefix length"), "{bad}: {err}");
    }
    assert!(parse_cidr("0.0.0.0/0").is_ok());
}

#[test]
fn invalid_utf8_is_placed_and_huge_values_are_not_echoed() {
    let err = utf8_text(b"interface = \"eth0\"\nicmp_echo = \"al\xfflow\"\n".to_vec()).unwrap_err();
    assert_eq!(err, "2:16: not UTF-8 text (an invalid byte here)");
    let huge = "9".repeat(50 << 20);
    let err = parse_cidr(&huge).unwrap_err();
    assert!(err.len() < 200, "{} bytes of error", err.len());
    assert!(err.contains("more bytes"), "{err}");
}

#[test]
fn crowdsec_section_parses_and_its_errors_name_their_place() {
    let c = parse(
        "[crowdsec]\nenabled = true\nlapi_url = \"http://198.18.0.9:8080/\"\n\
         bouncer_key_file = \"/etc/mailguard/crowdsec.key\"\npoll_interval = \"2s\"\n\
         scopes = [\"Ip\"]\norigins = [\"cscli\", \"crowdsec\"]\n",
    )
    .expect("a good section");
    assert!(c.crowdsec.enabled);
    assert_eq!(c.crowdsec.lapi_url, "http://198.18.0.9:8080");
    assert_eq!(c.crowdsec.poll_interval, 2);
    assert_eq!(c.crowdsec.resync_interval, 3600);
    assert_eq!(c.crowdsec.scopes, vec![crowdsec::Scope::Ip]);
    assert_eq!(c.crowdsec.origins, vec!["cscli", "crowdsec"]);
    let d = parse("[crowdsec]\nenabled = true\n").unwrap().crowdsec;
    assert_eq!(
        d.lapi_url, "http://127.0.0.1:8080",
        "CrowdSec's own default"
    );
    assert_eq!(
        d.bouncer_key_file,
        std::path::Path::new("/etc/mailguard/crowdsec.key")
    );
    assert!(!d.agent(), "no machine: nothing pushed");
    assert_eq!(
        d.share_refused, 0,
        "refused sources are not shared unless asked"
    );
    let r = parse(
        "[crowdsec]\nenabled = true\nmachine_id = \"mx1\"\nshare_refused = 50\nshare_refused_for = \"4h\"\n",
    )
    .unwrap()
    .crowdsec;
    assert_eq!((r.share_refused, r.share_refused_for), (50, 4 * 3600));
    assert!(!parse("").unwrap().crowdsec.enabled);
    let cases = [
        (
            "[crowdsec]\nlapi_url = \"198.18.0.9:8080\"\n",
            "t.toml:2:12: `crowdsec.lapi_url`: `198.18.0.9:8080` is not a LAPI address",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://198.18.0.9:8080/v1\"\n",
            "t.toml:2:12: `crowdsec.lapi_url`: `http://198.18.0.9:8080/v1` is not a LAPI address",
        ),
        (
            "[crowdsec]\nbouncer_key_file = \"crowdsec.key\"\n",
            "t.toml:2:20: `crowdsec.bouncer_key_file`: `crowdsec.key` is not an absolute path",
        ),
        (
            "[crowdsec]\npoll_interval = \"2h\"\n",
            "t.toml:2:17: `crowdsec.poll_interval`: `2h` is out of range (1s to 3600s)",
        ),
        (
            "[crowdsec]\npoll_interval = \"1m\"\nresync_interval = \"30s\"\n",
            "t.toml:3:19: `crowdsec.resync_interval`: `30s` is out of range (60s to 604800s)",
        ),
        (
            "[crowdsec]\nscopes = [\"ip\", \"country\"]\n",
            "t.toml:2:17: `crowdsec.scopes[1]`: `country` is not a scope mailguard enforces",
        ),
        ("[crowdsec]\nscopes = []\n", "`crowdsec.scopes`: no scope"),
        (
            "[crowdsec]\norigins = [\"a b\"]\n",
            "t.toml:2:12: `crowdsec.origins[0]`: `a b` is not an origin name",
        ),
        ("[crowdsec]\nkey = \"secret\"\n", "unknown field `key`"),
        (
            "[crowdsec]\nshare_refused = 20\n",
            "t.toml:2:17: `crowdsec.share_refused`: sharing refused sources needs `crowdsec.machine_id`",
        ),
        (
            "[crowdsec]\nmachine_id = \"mx1\"\nshare_refused = -1\n",
            "t.toml:3:17: `crowdsec.share_refused`: -1 is out of range",
        ),
        (
            "[crowdsec]\nmachine_id = \"mx1\"\nshare_refused = 5\nshare_refused_for = \"10s\"\n",
            "t.toml:4:21: `crowdsec.share_refused_for`: `10s` is out of range (60s to 2592000s)",
        ),
    ];
    for (text, message) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.contains(message), "{text}: {e}");
    }
}
