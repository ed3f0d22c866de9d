//! `gateway init` as a user (or a Kubernetes Job) runs it: clear start-up errors, no
//! secrets in the output, and idempotent against a real broker.

use std::process::{Command, Output};

use testkit::Broker;

fn gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_clear()
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .output()
        .expect("run gateway")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn a_missing_setting_is_named_at_start_up() {
    let out = gateway(&["init", "--timeout-secs", "1"], &[]);
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains("KAFKA_BOOTSTRAP_SERVERS is required"), "{text}");
}

#[test]
fn an_invalid_setting_is_named_and_secrets_stay_out_of_the_output() {
    let out = gateway(
        &["init", "--timeout-secs", "1"],
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_SASL_USERNAME", "chat"),
            ("KAFKA_SASL_PASSWORD", "pa55-do-not-log"),
        ],
    );
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains("KAFKA_SASL_MECHANISM=\"gssapi\" is invalid"), "{text}");
    assert!(!text.contains("pa55-do-not-log"), "the password leaked: {text}");
}

#[test]
fn an_unreachable_broker_fails_within_the_timeout() {
    let started = std::time::Instant::now();
    let out = gateway(&["init", "--timeout-secs", "2"], &[("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")]);
    assert!(!out.status.success());
    assert!(started.elapsed().as_secs() < 15, "init did not respect its timeout");
    assert!(text(&out).contains("bootstrap gave up"), "{}", text(&out));
}

#[test]
fn init_twice_against_a_real_broker() {
    let broker = Broker::start().expect("start tansu");
    let servers = broker.bootstrap_servers();
    let env = [("KAFKA_BOOTSTRAP_SERVERS", servers.as_str())];

    let first = gateway(&["init", "--partitions", "3"], &env);
    assert!(first.status.success(), "{}", text(&first));
    let second = gateway(&["init", "--partitions", "3"], &env);
    assert!(second.status.success(), "{}", text(&second));

    let summary = |out: &Output| -> serde_json::Value {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "broker ready for the chat stack")
            .unwrap_or_else(|| panic!("no summary line in {stderr}"))
    };
    let (first, second) = (summary(&first), summary(&second));
    assert_eq!(first["initialised_partitions"], 9, "{first}");
    assert!(first["existing"] == "[]", "{first}");
    assert_eq!(second["created"], "[]", "{second}");
    assert_eq!(second["initialised_partitions"], 0, "{second}");
}
