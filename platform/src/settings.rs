//! Settings from environment variables (12-factor), secrets from `*_FILE` files.
//!
//! Every binary reads its settings once at start-up through [`Env`] and fails with a
//! [`SettingsError`] that names the variable and says what is expected, so that a pod
//! that cannot start says why in its first log line. Secrets become
//! [`secrecy::SecretString`]: their values never appear in `Debug` output or errors.
//! [`exit_code`] turns such an error into exit status 2.

use std::{collections::HashMap, fmt::Display, path::PathBuf, process::ExitCode, str::FromStr};

use secrecy::SecretString;

/// A setting that is missing or unusable; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is not set (or is empty).
    #[error("{name} is required: {help}")]
    Missing {
        /// The variable.
        name: String,
        /// What it should hold.
        help: String,
    },
    /// A variable is set to something that cannot be used.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: String,
        /// What it was set to (never a secret's value).
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A variable still holds a placeholder of `k8s/secrets.template.yaml`: the stack
    /// would run with publicly known keys.
    #[error("{name} holds the placeholder of k8s/secrets.template.yaml ({PLACEHOLDER}…): create the real Secret with the README's `kubectl create secret` commands, and leave out the keys you do not use")]
    Placeholder {
        /// The variable (or its `*_FILE`).
        name: String,
    },
    /// A `*_FILE` variable names a file that cannot be read.
    #[error("{name}={path:?}: cannot read the file: {source}")]
    File {
        /// The `*_FILE` variable.
        name: String,
        /// The path it holds.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Both `NAME` and `NAME_FILE` are set, and it is unclear which one wins.
    #[error("both {name} and {name}_FILE are set: set only one")]
    Ambiguous {
        /// The variable without `_FILE`.
        name: String,
    },
}

impl SettingsError {
    /// `name` is set to `value`, which cannot be used because of `reason`.
    pub fn invalid(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self::Invalid { name: name.into(), value: value.into(), reason: reason.into() }
    }
}

/// Whether `err` is a configuration error: a [`SettingsError`] anywhere in its chain.
pub fn is_config_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<SettingsError>())
}

/// How the binary `binary` exits after `result`: 0 on success; 2 for a configuration
/// error, because restarting with the same environment cannot help and the operator
/// must fix it; 1 otherwise. A failure is logged and printed to stderr as
/// `binary: error`.
pub fn exit_code(binary: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_config_error(&err) => {
            tracing::error!(error = format!("{err:#}"), "configuration error");
            eprintln!("{binary}: {err:#}");
            ExitCode::from(2)
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{binary} failed");
            eprintln!("{binary}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A snapshot of the environment to read settings from.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    /// An environment made of the given pairs, for tests and tools.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of `name`, treating an empty value as unset.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// The value of `name`, or an error saying what it should hold.
    pub fn required(&self, name: &str, help: &str) -> Result<String, SettingsError> {
        let value = self
            .optional(name)
            .ok_or_else(|| SettingsError::Missing { name: name.into(), help: help.into() })?;
        refuse_placeholder(name, &value)?;
        Ok(value)
    }

    /// `name` parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| SettingsError::Invalid {
                name: name.into(),
                value: raw.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// `name` as one of `allowed` (case-insensitive, returned lower-case), or `default`.
    pub fn one_of(&self, name: &str, allowed: &[&str], default: &str) -> Result<String, SettingsError> {
        let value = self.optional(name).unwrap_or_else(|| default.to_string()).to_lowercase();
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(SettingsError::Invalid {
                name: name.into(),
                value,
                reason: format!("expected one of {}", allowed.join(", ")),
            })
        }
    }

    /// A secret from `name`, or from the file named by `name_FILE` (a mounted Kubernetes
    /// Secret); a trailing newline in the file is dropped. `None` when neither is set.
    pub fn secret(&self, name: &str) -> Result<Option<SecretString>, SettingsError> {
        let file_var = format!("{name}_FILE");
        match (self.optional(name), self.optional(&file_var)) {
            (Some(_), Some(_)) => Err(SettingsError::Ambiguous { name: name.into() }),
            (Some(value), None) => {
                refuse_placeholder(name, &value)?;
                Ok(Some(SecretString::from(value)))
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path).map_err(|source| SettingsError::File {
                    name: file_var.clone(),
                    path: path.clone(),
                    source,
                })?;
                let value = text.trim_end_matches(['\r', '\n']).to_string();
                refuse_placeholder(&file_var, &value)?;
                if value.is_empty() {
                    return Err(SettingsError::Invalid {
                        name: file_var,
                        value: path.display().to_string(),
                        reason: "the file is empty".into(),
                    });
                }
                Ok(Some(SecretString::from(value)))
            }
            (None, None) => Ok(None),
        }
    }

    /// Like [`Env::secret`], but an error naming both variables when neither is set.
    pub fn required_secret(&self, name: &str, help: &str) -> Result<SecretString, SettingsError> {
        self.secret(name)?.ok_or_else(|| SettingsError::Missing {
            name: format!("{name} (or {name}_FILE)"),
            help: help.into(),
        })
    }
}

/// What every placeholder value of `k8s/secrets.template.yaml` starts with.
pub const PLACEHOLDER: &str = "REPLACE-ME";

fn refuse_placeholder(name: &str, value: &str) -> Result<(), SettingsError> {
    if value.contains(PLACEHOLDER) {
        return Err(SettingsError::Placeholder { name: name.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Write;

    #[test]
    fn missing_variables_are_named_with_help() {
        let err = Env::default().required("KAFKA_BOOTSTRAP_SERVERS", "host:port list").unwrap_err();
        assert_eq!(err.to_string(), "KAFKA_BOOTSTRAP_SERVERS is required: host:port list");
    }

    #[test]
    fn the_secret_templates_placeholders_are_refused_without_echoing_them() {
        let template = "REPLACE-ME-with-openssl-rand-hex-32-output-000000";
        let env =
            Env::from_pairs([("JWT_SECRET", template), ("KAFKA_BOOTSTRAP_SERVERS", "REPLACE-ME-b:9096")]);
        let err = env.secret("JWT_SECRET").unwrap_err().to_string();
        assert!(err.starts_with("JWT_SECRET holds the placeholder"), "{err}");
        assert!(!err.contains(template), "{err}");
        let err = env.required("KAFKA_BOOTSTRAP_SERVERS", "host:port").unwrap_err().to_string();
        assert!(err.contains("create the real Secret"), "{err}");

        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "{template}").expect("write");
        let env = Env::from_pairs([("CONVERSATION_KEY_FILE", file.path().to_str().expect("utf-8"))]);
        let err = env.secret("CONVERSATION_KEY").unwrap_err().to_string();
        assert!(err.starts_with("CONVERSATION_KEY_FILE holds the placeholder"), "{err}");
    }

    #[test]
    fn empty_counts_as_unset() {
        let env = Env::from_pairs([("A", "  ")]);
        assert!(env.optional("A").is_none());
        assert!(env.required("A", "x").is_err());
    }

    #[test]
    fn invalid_numbers_name_the_variable_and_value() {
        let env = Env::from_pairs([("PARTITIONS", "six")]);
        let err = env.parse_or::<i32>("PARTITIONS", 6).unwrap_err();
        assert!(err.to_string().starts_with("PARTITIONS=\"six\" is invalid"), "{err}");
        assert_eq!(Env::default().parse_or::<i32>("PARTITIONS", 6).unwrap(), 6);
    }

    #[test]
    fn one_of_lists_the_allowed_values() {
        let env = Env::from_pairs([("MODE", "Sideways")]);
        let err = env.one_of("MODE", &["up", "down"], "up").unwrap_err();
        assert!(err.to_string().contains("expected one of up, down"), "{err}");
        assert_eq!(
            Env::from_pairs([("MODE", "DOWN")]).one_of("MODE", &["up", "down"], "up").unwrap(),
            "down"
        );
    }

    #[test]
    fn secrets_come_from_files_without_the_trailing_newline() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cr3t").unwrap();
        let env = Env::from_pairs([("API_KEY_FILE", file.path().to_str().unwrap())]);
        assert_eq!(env.secret("API_KEY").unwrap().unwrap().expose_secret(), "s3cr3t");
    }

    #[test]
    fn secret_errors_never_contain_the_secret() {
        let env = Env::from_pairs([("API_KEY", "s3cr3t"), ("API_KEY_FILE", "/nowhere")]);
        let err = env.secret("API_KEY").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cr3t"));
        let err = Env::from_pairs([("API_KEY_FILE", "/does/not/exist")]).secret("API_KEY").unwrap_err();
        assert!(err.to_string().contains("API_KEY_FILE"), "{err}");
        let secret = Env::from_pairs([("API_KEY", "s3cr3t")]).secret("API_KEY").unwrap().unwrap();
        assert!(!format!("{secret:?}").contains("s3cr3t"));
    }

    #[test]
    fn configuration_errors_are_found_under_context() {
        let missing = || Env::default().required("KAFKA_BOOTSTRAP_SERVERS", "host:port list");
        assert!(is_config_error(&anyhow::Error::new(missing().unwrap_err())));
        let wrapped =
            anyhow::Error::new(missing().unwrap_err()).context("configuration error").context("run");
        assert!(is_config_error(&wrapped));
        assert!(!is_config_error(&anyhow::anyhow!("broker unreachable")));
        assert_eq!(exit_code("test", Ok(())), ExitCode::SUCCESS);
        assert_eq!(exit_code("test", Err(wrapped)), ExitCode::from(2));
        assert_eq!(exit_code("test", Err(anyhow::anyhow!("broker unreachable"))), ExitCode::FAILURE);
    }

    #[test]
    fn required_secret_names_both_variables() {
        let err = Env::default().required_secret("JWT_SECRET", "HS256 key").unwrap_err();
        assert_eq!(err.to_string(), "JWT_SECRET (or JWT_SECRET_FILE) is required: HS256 key");
    }
}
