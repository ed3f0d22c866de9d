//! The command line, and the [`Config`] a run is made from.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::Parser;
use reqwest::Url;

/// Drives the chat stack's gateway with N concurrent conversations at a target message
/// rate, reads every reply over SSE, and reports delivery counts, time to first token
/// and full-reply latency; optionally samples the handlers' Kafka lag (as KEDA computes
/// it) and the local autoscaler's replica counts, and plots them.
///
/// Exit status: 0 when every accepted message was answered (or got an error event),
/// 3 when some accepted message was never answered before the drain ended (lost or
/// too slow), 1 on a failure of the load test itself, 2 on bad arguments.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about, long_about)]
pub struct Args {
    /// The gateway's base URL (an ingress in a cluster).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// Concurrent conversations; each has its own SSE stream and (with --jwt-secret) user.
    #[arg(long, default_value_t = 10)]
    pub conversations: usize,

    /// Target rate in messages per second, over all conversations (open loop: sends
    /// keep to the schedule however late the replies are).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,

    /// How long to send, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,

    /// One bearer token for every conversation (they all belong to its user).
    #[arg(long, env = "LOADTEST_TOKEN", hide_env_values = true, conflicts_with = "jwt_secret")]
    pub token: Option<String>,

    /// The gateway's HS256 secret: mints one token per virtual user (sub=user-1…user-N).
    #[arg(long, env = "LOADTEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Kafka bootstrap servers (plaintext): samples the handler groups' lag every
    /// second, as KEDA's Kafka scaler computes it (offsetResetPolicy earliest).
    #[arg(long)]
    pub kafka: Option<String>,

    /// The local autoscaler's base URL: samples `GET /status` (replicas per handler) every second.
    #[arg(long)]
    pub autoscaler_url: Option<String>,

    /// After the last send, keep reading replies (and sampling) until every accepted
    /// message is answered or this many seconds pass.
    #[arg(long, default_value_t = 60.0)]
    pub drain_secs: f64,

    /// After the drain, keep sampling lag and replicas this many seconds more, to watch
    /// the scale-down; ends early once the autoscaler reports every handler at 0 replicas.
    #[arg(long, default_value_t = 0.0)]
    pub tail_secs: f64,

    /// Writes report.json, timeline.csv, scaling.svg and latency.svg into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// The text of each message; `{message}` is replaced by the message number,
    /// `{conversation}` by the conversation number.
    #[arg(
        long,
        default_value = "Message {message} of conversation {conversation}: reply with one short sentence."
    )]
    pub text: String,

    /// Give up on a `POST /chat` after this many seconds (counted as failed).
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,

    /// Reconnect an SSE stream that stayed silent (not even a heartbeat) this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub stream_idle_timeout: f64,

    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// How every conversation authenticates.
#[derive(Clone)]
pub enum Auth {
    /// No `Authorization` header (a gateway with `AUTH=disabled`).
    None,
    /// The same bearer token for every conversation.
    Token(String),
    /// Mint an HS256 token per virtual user with this secret.
    Mint(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Token(_) => "Token(…)",
            Auth::Mint(_) => "Mint(…)",
        })
    }
}

/// Everything one run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's base URL.
    pub url: Url,
    /// Concurrent conversations.
    pub conversations: usize,
    /// Messages per second over all conversations.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// How conversations authenticate.
    pub auth: Auth,
    /// Kafka bootstrap servers for lag sampling.
    pub kafka: Option<String>,
    /// The local autoscaler's base URL.
    pub autoscaler_url: Option<Url>,
    /// Longest wait for outstanding replies after the last send.
    pub drain: Duration,
    /// Extra sampling after the drain.
    pub tail: Duration,
    /// Where to write the report files.
    pub out: Option<PathBuf>,
    /// Message text template (`{message}`, `{conversation}`).
    pub text: String,
    /// Bound on one `POST /chat`.
    pub request_timeout: Duration,
    /// Silence after which an SSE stream is reconnected.
    pub stream_idle_timeout: Duration,
    /// Print one progress line per second.
    pub progress: bool,
    /// Stop sending and draining on Ctrl-C (and still report); the binary sets it.
    pub handle_ctrl_c: bool,
}

impl Config {
    /// A configuration with the command line's defaults for `url`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        config_from_args(["--url", url])
    }
}

fn secs(name: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) {
        bail!(
            "--{name} must be a {} number of seconds, got {value}",
            if allow_zero { "non-negative" } else { "positive" }
        );
    }
    Duration::try_from_secs_f64(value).with_context(|| format!("--{name} {value} is out of range"))
}

fn base_url(flag: &str, s: &str) -> anyhow::Result<Url> {
    let url = Url::parse(s).with_context(|| format!("--{flag} {s} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--{flag} {s} must be an http:// or https:// URL");
    }
    Ok(url)
}

impl Args {
    /// Checks the arguments and turns them into a [`Config`].
    pub fn into_config(self) -> anyhow::Result<Config> {
        if self.conversations == 0 {
            bail!("--conversations must be at least 1");
        }
        if !self.rate.is_finite() || self.rate <= 0.0 {
            bail!("--rate must be a positive number of messages per second, got {}", self.rate);
        }
        let auth = match (self.token, self.jwt_secret) {
            (Some(token), _) => Auth::Token(token),
            (None, Some(secret)) if secret.is_empty() => bail!("--jwt-secret is empty"),
            (None, Some(secret)) => Auth::Mint(secret),
            (None, None) => Auth::None,
        };
        Ok(Config {
            url: base_url("url", &self.url)?,
            conversations: self.conversations,
            rate: self.rate,
            duration: secs("duration", self.duration, false)?,
            auth,
            kafka: self.kafka.filter(|k| !k.trim().is_empty()),
            autoscaler_url: self
                .autoscaler_url
                .as_deref()
                .map(|u| base_url("autoscaler-url", u))
                .transpose()?,
            drain: secs("drain-secs", self.drain_secs, true)?,
            tail: secs("tail-secs", self.tail_secs, true)?,
            out: self.out,
            text: self.text,
            request_timeout: secs("request-timeout", self.request_timeout, false)?,
            stream_idle_timeout: secs("stream-idle-timeout", self.stream_idle_timeout, false)?,
            progress: !self.quiet,
            handle_ctrl_c: false,
        })
    }
}

/// Parses command-line arguments (without the program name) into a [`Config`].
pub fn config_from_args<I, T>(args: I) -> anyhow::Result<Config>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("loadtest")).chain(args.into_iter().map(Into::into));
    Args::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?.into_config()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        config_from_args(args.iter().copied())
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.url.as_str(), "http://127.0.0.1:8000/");
        assert!(matches!(config.auth, Auth::None));
        assert!(config.progress);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--conversations", "0"][..], "--conversations"),
            (&["--duration=-1"][..], "--duration"),
            (&["--url", "localhost:8000"][..], "--url"),
            (&["--autoscaler-url", "ftp://x"][..], "--autoscaler-url"),
        ] {
            let err = parse(args).expect_err("refused").to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn token_and_secret_exclude_each_other() {
        assert!(Args::try_parse_from(["loadtest", "--token", "t", "--jwt-secret", "s"]).is_err());
        let config = parse(&["--jwt-secret", "s3cret"]).expect("secret");
        assert!(matches!(config.auth, Auth::Mint(_)));
        assert!(!format!("{config:?}").contains("s3cret"), "secrets stay out of Debug");
    }
}
