use super::*;
use clap::Parser;

/// The example shipped in `contrib/` (and shown in docs/self-hosting.md).
const EXAMPLE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/rendezvous.toml"));

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: NodeArgs,
}

fn args(flags: &[&str]) -> NodeArgs {
    let argv = std::iter::once("node").chain(flags.iter().copied());
    Cli::try_parse_from(argv).unwrap().args
}

fn file(text: &str) -> FileConfig {
    FileConfig::parse(text).unwrap()
}

fn invalid_setting(result: Result<ServerConfig, ConfigError>) -> &'static str {
    match result {
        Err(ConfigError::Invalid { setting, .. }) => setting,
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

/// The fields that have no identity (all but the metrics handle), for comparisons.
fn settings(c: &ServerConfig) -> String {
    let ServerConfig { metrics_handle: _, limits, .. } = c;
    let c = ServerConfig { metrics_handle: Arc::default(), limits: limits.clone(), ..c.clone() };
    format!("{c:?}")
}

#[test]
fn rates_take_decimal_suffixes() {
    assert_eq!(parse_rate("0"), Ok(0));
    assert_eq!(parse_rate("500000"), Ok(500_000));
    assert_eq!(parse_rate("800k"), Ok(800_000));
    assert_eq!(parse_rate("10M"), Ok(10_000_000));
    assert_eq!(parse_rate(" 1G "), Ok(1_000_000_000));
    assert_eq!(parse_rate("18446744073"), Ok(18_446_744_073));
    for bad in ["", "M", "1.5M", "-1", "10MB", "1T", "1 M", "+5", "0x10"] {
        let err = parse_rate(bad).unwrap_err();
        assert!(err.contains("not a rate"), "{bad:?}: {err}");
    }
    assert!(parse_rate("18446744074G").unwrap_err().contains("too large"));
    assert!(parse_rate("99999999999999999999").is_err(), "over u64 without a suffix");
}

#[test]
fn no_flags_and_no_file_give_the_defaults() {
    let config = args(&[]).load().unwrap();
    assert_eq!(settings(&config), settings(&ServerConfig::default()));
}

#[test]
fn the_shipped_example_holds_the_defaults_and_only_known_keys() {
    let config = args(&[]).merge(file(EXAMPLE)).unwrap();
    assert_eq!(settings(&config), settings(&ServerConfig::default()));
    // The settings it leaves commented out are valid keys too.
    let uncommented: String = EXAMPLE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => l,
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    let all = file(&uncommented);
    assert_eq!(all.token.as_deref(), Some("change-me"));
    assert!(all.metrics.is_some());
    assert_eq!(all.tls.unwrap().cert, PathBuf::from("/etc/p2p-copy/fullchain.pem"));
}

#[test]
fn flags_win_over_the_file_which_wins_over_defaults() {
    let text = r#"
        listen = "127.0.0.1:7000"
        grace = 30
        tcp = false
        token = "from-file"
        log_format = "json"
        [relay]
        session_rate = "10M"
        total_rate = 1000000
        idle = 5
    "#;
    let a = args(&["--grace", "3", "--relay-session-rate", "2K", "--token", "from-flag"]);
    let config = a.merge(file(text)).unwrap();
    assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap(), "file");
    assert_eq!(config.grace, Duration::from_secs(3), "flag");
    assert!(!config.tcp, "file");
    assert_eq!(config.limits.token.as_deref(), Some("from-flag"));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.relay.session_rate, 2_000, "flag");
    assert_eq!(config.relay.total_rate, 1_000_000, "file");
    assert_eq!(config.relay.idle_timeout, Duration::from_secs(5), "file");
    assert_eq!(config.relay.max_duration, RelayLimits::default().max_duration, "default");
    assert_eq!(config.limits.max_nameplates, Limits::default().max_nameplates, "default");
    assert_eq!(config.metrics, None);

    // --no-tcp turns TCP off whatever the file says; TLS flags replace the file's pair.
    let config = args(&["--no-tcp"]).merge(file("tcp = true")).unwrap();
    assert!(!config.tcp);
    let a = args(&["--metrics", "127.0.0.1:9464", "--log-format", "json", "--listen", "[::1]:1"]);
    let config = a.merge(FileConfig::default()).unwrap();
    assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(config.listen, "[::1]:1".parse().unwrap());
}

#[test]
fn unknown_keys_and_wrong_types_are_errors_that_name_them() {
    for (text, named) in [
        ("lisen = \"0.0.0.0:1\"", "lisen"),
        ("[relay]\nidle_timeout = 5", "idle_timeout"),
        ("[tls]\ncert = \"a\"\nkey = \"b\"\nchain = \"c\"", "chain"),
        ("[metrics]\nlisten = \"127.0.0.1:1\"", "metrics"),
        ("grace = \"ten\"", "grace"),
        ("listen = \"nowhere\"", "listen"),
        ("log_format = \"xml\"", "xml"),
        ("[relay]\nsession_rate = \"fast\"", "fast"),
        ("[relay]\ntotal_rate = -1", "negative"),
        ("[tls]\ncert = \"a\"", "key"),
        ("max_connections = 1\nmax_connections = 2", "max_connections"),
    ] {
        let err = FileConfig::parse(text).unwrap_err();
        assert!(err.contains(named), "{text:?} gave {err}");
    }
}

#[test]
fn the_file_is_read_with_a_size_cap_and_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "grace = 2\n[relay]\nmax_sessions = 7\n").unwrap();
    let config = args(&["--config", path.to_str().unwrap()]).load().unwrap();
    assert_eq!((config.grace, config.relay.max_sessions), (Duration::from_secs(2), 7));

    std::fs::write(&path, "grace = 2\nfoo = 1\n").unwrap();
    let err = args(&["--config", path.to_str().unwrap()]).load().unwrap_err().to_string();
    assert!(err.contains("node.toml") && err.contains("foo") && err.contains("line 2"), "{err}");

    std::fs::write(&path, "# padding\n".repeat(10_000)).unwrap();
    let err = args(&["--config", path.to_str().unwrap()]).load().unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");

    let missing = dir.path().join("missing.toml");
    let err = args(&["--config", missing.to_str().unwrap()]).load().unwrap_err().to_string();
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn values_out_of_range_are_refused_naming_the_setting() {
    let cases: [(&[&str], &str); 9] = [
        (&["--grace", "3601"], "--grace"),
        (&["--relay-max-duration", "0"], "--relay-max-duration"),
        (&["--relay-max-duration", "700000"], "--relay-max-duration"),
        (&["--relay-idle", "0"], "--relay-idle"),
        (&["--relay-max-duration", "60", "--relay-idle", "61"], "--relay-idle"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--clients-per-ip", "0"], "--clients-per-ip"),
        (&["--token", ""], "--token"),
        (&["--listen", "0.0.0.0:4433", "--metrics", "127.0.0.1:4433"], "--metrics"),
    ];
    for (flags, setting) in cases {
        let got = invalid_setting(args(flags).merge(FileConfig::default()));
        assert!(got.starts_with(setting), "{flags:?}: {got}");
    }
    let long = "x".repeat(MAX_TOKEN + 1);
    assert!(invalid_setting(args(&["--token", &long]).load()).starts_with("--token"));
    // Without TCP the metrics listener may share the port number (it is UDP then).
    args(&["--no-tcp", "--listen", "0.0.0.0:4433", "--metrics", "127.0.0.1:4433"]).load().unwrap();
}

/// A certificate and key in PEM, as an operator would have them from their CA.
fn pem_pair() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["node.example".to_owned()]).unwrap();
    (certified.cert.pem(), certified.key_pair.serialize_pem())
}

#[test]
fn tls_files_are_loaded_and_checked_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (cert, key) = pem_pair();
    let (_, other_key) = pem_pair();
    std::fs::write(path("cert.pem"), &cert).unwrap();
    std::fs::write(path("key.pem"), &key).unwrap();
    std::fs::write(path("other-key.pem"), &other_key).unwrap();
    std::fs::write(path("garbage.pem"), "not pem at all").unwrap();
    let p = |name: &str| path(name).to_str().unwrap().to_owned();

    let config = args(&["--tls-cert", &p("cert.pem"), "--tls-key", &p("key.pem")]).load().unwrap();
    let tls = config.tls.unwrap();
    let (chain, _key) = tls.load().unwrap();
    assert_eq!(chain.len(), 1);

    // The same from the file.
    let text = format!("[tls]\ncert = {:?}\nkey = {:?}\n", p("cert.pem"), p("key.pem"));
    assert_eq!(args(&[]).merge(file(&text)).unwrap().tls, Some(tls));

    let load_err = |cert: &str, key: &str| {
        args(&["--tls-cert", &p(cert), "--tls-key", &p(key)]).load().unwrap_err().to_string()
    };
    let err = load_err("cert.pem", "other-key.pem");
    assert!(err.contains("other-key.pem") && err.contains("does not go with"), "{err}");
    let err = load_err("garbage.pem", "key.pem");
    assert!(err.contains("garbage.pem") && err.contains("no certificate"), "{err}");
    let err = load_err("cert.pem", "garbage.pem");
    assert!(err.contains("garbage.pem") && err.contains("private key"), "{err}");
    let err = load_err("cert.pem", "absent.pem");
    assert!(err.contains("absent.pem"), "{err}");
    // A key where the certificate should be is not a certificate.
    let err = load_err("key.pem", "key.pem");
    assert!(err.contains("no certificate"), "{err}");

    let cert_only = args(&["--tls-cert", &p("cert.pem")]).load();
    assert!(invalid_setting(cert_only).starts_with("--tls-cert"));
    // The certificate is QUIC's too, so it goes without TCP.
    let no_tcp = args(&["--no-tcp", "--tls-cert", &p("cert.pem"), "--tls-key", &p("key.pem")]);
    assert!(no_tcp.load().unwrap().tls.is_some());
}

#[test]
fn the_docs_show_every_flag_and_the_shipped_files_as_they_are() {
    let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/self-hosting.md"));
    let unit = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/p2p-copy-rendezvous.service"
    ));
    assert!(docs.contains(EXAMPLE), "docs/self-hosting.md shows contrib/rendezvous.toml");
    assert!(docs.contains(unit), "docs/self-hosting.md shows the systemd unit");
    let command = <Cli as clap::CommandFactory>::command();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long != "help" && long != "version" {
            assert!(docs.contains(&format!("| `--{long}")), "--{long} is in the settings table");
        }
    }
}
