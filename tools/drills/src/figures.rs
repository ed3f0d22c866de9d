//! What a drill reports: one `DRILL <name> | key value | …` line, the same shape for
//! every drill, so a CI log can be grepped for the numbers.

use std::fmt::Display;

use loadtest::Report;

/// The figures of one drill, in the order they were added.
#[derive(Debug, Clone)]
pub struct Figures {
    drill: String,
    rows: Vec<(String, String)>,
}

impl Figures {
    /// No figures yet.
    pub fn new(drill: impl Into<String>) -> Self {
        Self { drill: drill.into(), rows: Vec::new() }
    }

    /// Adds `name value`.
    pub fn add(&mut self, name: &str, value: impl Display) -> &mut Self {
        self.rows.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a duration in seconds with one decimal.
    pub fn secs(&mut self, name: &str, secs: f64) -> &mut Self {
        self.add(name, format!("{secs:.1}s"))
    }

    /// Adds the message counts of a load-test run, prefixed with `prefix` when several
    /// runs report together: sent, accepted, rejected, failed (no HTTP answer), answered,
    /// errored, lost (accepted with no `done`/`error`), duplicated (a second end seen),
    /// retried (a new attempt shown), mixed (a `done` whose text is not the tokens shown,
    /// unannounced), gaps (`gap` events: the client was told events were lost) and the
    /// median time from POST to `done`.
    pub fn load(&mut self, prefix: &str, report: &Report) -> &mut Self {
        let c = &report.counts;
        let name = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        self.add(&name("sent"), c.sent)
            .add(&name("accepted"), c.accepted)
            .add(&name("rejected"), c.rejected)
            .add(&name("failed"), c.failed)
            .add(&name("answered"), c.answered)
            .add(&name("errored"), c.errored)
            .add(&name("lost"), c.unanswered)
            .add(&name("duplicated"), report.streams.duplicate_ends)
            .add(&name("retried"), c.retried)
            .add(&name("mixed"), c.text_mismatches)
            .add(&name("gaps"), report.streams.gaps)
            .add(&name("reply_p50"), format!("{:.0}ms", report.latency.reply.p50_ms.unwrap_or(0.0)))
    }

    /// The `DRILL …` line.
    pub fn line(&self) -> String {
        let rows: Vec<String> = self.rows.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("DRILL {} | {}", self.drill, rows.join(" | "))
    }

    /// Prints the line (nextest shows it for passing drills too: see .config/nextest.toml).
    pub fn print(&self) {
        println!("{}", self.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_print_in_order_on_one_line() {
        let mut f = Figures::new("broker-restart");
        f.add("accepted", 12).secs("recovery", 3.25);
        assert_eq!(f.line(), "DRILL broker-restart | accepted 12 | recovery 3.2s");
    }
}
