//! Prepares a broker for the stack: topics, dead-letter topics and handler groups.
//!
//! Idempotent, so it can run on every deploy (a Kubernetes Job) and on every local
//! start: existing topics are kept, and only partitions where a handler group has no
//! committed offset get one, at the current log end. That makes KEDA's lag metric
//! exact from the first message: a fresh group would otherwise report lag 1 per
//! partition (offsetResetPolicy latest) and never scale to zero, or the whole log
//! (earliest) and scale out for history.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    types::RDKafkaErrorCode,
    TopicPartitionList,
};

use crate::{
    kafka::{self, KafkaSettings},
    lag, topics,
};

/// What to create and initialise.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Topics to create (dead-letter topics included).
    pub topics: Vec<String>,
    /// Partitions of each new topic.
    pub partitions: i32,
    /// Replication factor of each new topic.
    pub replication: i32,
    /// Consumer groups and the topics they read, to give committed offsets.
    pub groups: Vec<(String, Vec<String>)>,
}

impl Plan {
    /// The stack's topics and handler groups with `partitions` partitions each.
    pub fn stack(partitions: i32, replication: i32) -> Self {
        Self {
            topics: topics::all_with_dlq(),
            partitions,
            replication,
            groups: topics::HANDLER_GROUPS
                .iter()
                .map(|(g, ts)| (g.to_string(), ts.iter().map(|t| t.to_string()).collect()))
                .collect(),
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Topics created by this run.
    pub created: Vec<String>,
    /// Topics that already existed.
    pub existing: Vec<String>,
    /// `(group, topic, partition, offset)` committed by this run.
    pub initialised: Vec<(String, String, i32, i64)>,
}

/// Runs `plan` against the brokers, retrying until `deadline_after` elapses so that a
/// Job started before Kafka is ready waits for it instead of failing.
pub async fn run(settings: &KafkaSettings, plan: &Plan, deadline_after: Duration) -> anyhow::Result<Report> {
    if plan.partitions < 1 || plan.replication < 1 {
        bail!(
            "partitions and replication must be at least 1 (got {} and {})",
            plan.partitions,
            plan.replication
        );
    }
    let deadline = Instant::now() + deadline_after;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // Bound each attempt too: librdkafka waits long for an unreachable broker, and
        // `deadline_after` is a promise to the caller (a Job's or a script's timeout).
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let attempt_result = tokio::time::timeout(remaining, run_once(settings, plan))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from the brokers within {remaining:?}")));
        match attempt_result {
            Ok(report) => return Ok(report),
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(attempt, error = format!("{err:#}"), "bootstrap failed, retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(6)))).await;
            }
            Err(err) => return Err(err.context(format!("bootstrap gave up after {attempt} attempts"))),
        }
    }
}

async fn run_once(settings: &KafkaSettings, plan: &Plan) -> anyhow::Result<Report> {
    let mut report = Report::default();
    create_topics(settings, plan, &mut report).await?;
    let settings = settings.clone();
    let plan = plan.clone();
    tokio::task::spawn_blocking(move || {
        wait_for_topics(&settings, &plan)?;
        for (group, group_topics) in &plan.groups {
            let topics: Vec<&str> = group_topics.iter().map(String::as_str).collect();
            report.initialised.extend(init_group_offsets(&settings, group, &topics)?);
        }
        Ok(report)
    })
    .await
    .context("bootstrap task panicked")?
}

async fn create_topics(settings: &KafkaSettings, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        settings.base_config().create().context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic> = plan
        .topics
        .iter()
        .map(|t| NewTopic::new(t, plan.partitions, TopicReplication::Fixed(plan.replication)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await.context("creating topics")?;
    for result in results {
        match result {
            Ok(topic) => report.created.push(topic),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(topic),
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Waits until every topic of the plan is in the metadata with all its partitions
/// (creation is asynchronous on some brokers).
fn wait_for_topics(settings: &KafkaSettings, plan: &Plan) -> anyhow::Result<()> {
    let client = settings.base_consumer("chat-stack-bootstrap")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for topic in &plan.topics {
        loop {
            match kafka::partitions(&client, topic, Duration::from_secs(5)) {
                Ok(p) if !p.is_empty() => {
                    if p.len() as i32 != plan.partitions {
                        tracing::warn!(
                            topic,
                            found = p.len(),
                            wanted = plan.partitions,
                            "topic exists with another partition count; keeping it"
                        );
                    }
                    break;
                }
                Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Ok(_) => bail!("topic {topic} has no partitions"),
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

/// Commits the log-end offset for every partition of `topics` where `group` has no
/// committed offset yet; partitions with one are left alone so nothing is skipped.
fn init_group_offsets(
    settings: &KafkaSettings,
    group: &str,
    topics: &[&str],
) -> anyhow::Result<Vec<(String, String, i32, i64)>> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = settings.base_consumer(group)?;
    let mut to_commit = TopicPartitionList::new();
    let mut initialised = Vec::new();
    for (topic, partition, committed) in lag::committed_offsets(&consumer, topics, timeout)? {
        if committed.is_some() {
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(&topic, partition, timeout)
            .with_context(|| format!("fetching watermarks of {topic}/{partition}"))?;
        to_commit
            .add_partition_offset(&topic, partition, rdkafka::Offset::Offset(high))
            .with_context(|| format!("adding {topic}/{partition}"))?;
        initialised.push((group.to_string(), topic, partition, high));
    }
    if to_commit.count() > 0 {
        consumer
            .commit(&to_commit, CommitMode::Sync)
            .with_context(|| format!("committing initial offsets of group {group}"))?;
    }
    Ok(initialised)
}
