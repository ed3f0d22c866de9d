//! Once-a-second samples of what the scaling decisions are made from: the handler
//! groups' Kafka lag (computed as KEDA's Kafka scaler computes it) and the local
//! autoscaler's replica counts (`GET /status`).
//!
//! Each sampler runs in its own task and keeps only its latest sample; the progress
//! ticker reads it, so a slow broker or autoscaler never delays the timeline.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use platform::{
    kafka::KafkaSettings,
    lag::{self, OffsetResetPolicy},
    sync::lock,
    topics::HANDLER_GROUPS,
};
use rdkafka::consumer::BaseConsumer;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};

/// How often the samplers sample.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A sample older than this is shown as unknown.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The latest value a sampler got, or why it got none.
pub struct Latest<T> {
    inner: Mutex<Option<(Instant, Result<T, String>)>>,
    first_error: Mutex<Option<String>>,
}

impl<T: Clone> Latest<T> {
    /// Nothing sampled yet.
    pub fn new() -> Self {
        Self { inner: Mutex::new(None), first_error: Mutex::new(None) }
    }

    /// Stores a sample taken now.
    pub fn set(&self, value: Result<T, String>) {
        if let Err(e) = &value {
            lock(&self.first_error).get_or_insert_with(|| e.clone());
        }
        *lock(&self.inner) = Some((Instant::now(), value));
    }

    /// The value, when one was sampled within [`STALE_AFTER`].
    pub fn fresh(&self) -> Option<T> {
        match &*lock(&self.inner) {
            Some((at, Ok(v))) if at.elapsed() <= STALE_AFTER => Some(v.clone()),
            _ => None,
        }
    }

    /// True once anything (a value or an error) was sampled.
    pub fn sampled(&self) -> bool {
        lock(&self.inner).is_some()
    }

    /// The first error any sample had.
    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    /// The error of the latest sample, if it failed.
    pub fn error(&self) -> Option<String> {
        match &*lock(&self.inner) {
            Some((_, Err(e))) => Some(e.clone()),
            _ => None,
        }
    }
}

impl<T: Clone> Default for Latest<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Total lag per handler group.
pub type GroupLag = BTreeMap<String, i64>;

/// One handler as the local autoscaler reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaledObjectStatus {
    /// The ScaledObject's (and handler's) name, e.g. `responder`.
    pub name: String,
    /// Handler processes running now.
    pub replicas: u32,
    /// Replicas the scaling rule asks for.
    #[serde(default)]
    pub desired: Option<u32>,
    /// The total lag the autoscaler saw.
    #[serde(default)]
    pub lag: Option<i64>,
    /// Above the activation threshold.
    #[serde(default)]
    pub active: Option<bool>,
}

/// The body of the autoscaler's `GET /status`.
#[derive(Debug, Clone, Deserialize)]
pub struct AutoscalerStatus {
    /// One entry per scaled handler.
    pub scaled_objects: Vec<ScaledObjectStatus>,
}

/// Per handler name, its latest status.
pub type Scaling = BTreeMap<String, ScaledObjectStatus>;

/// Reads KEDA's view of the handler groups' lag.
pub struct LagProbe {
    groups: Vec<(String, &'static [&'static str], BaseConsumer)>,
    timeout: Duration,
}

impl LagProbe {
    /// Clients for every group of [`HANDLER_GROUPS`] on `bootstrap` (plaintext). They
    /// never join their group: they only read its committed offsets.
    pub fn connect(bootstrap: &str) -> anyhow::Result<Self> {
        let settings = KafkaSettings::plaintext(bootstrap);
        let groups = HANDLER_GROUPS
            .iter()
            .map(|(group, topics)| {
                let consumer = settings
                    .base_consumer(group)
                    .with_context(|| format!("a Kafka client for group {group} on {bootstrap}"))?;
                Ok((group.to_string(), *topics, consumer))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { groups, timeout: Duration::from_secs(3) })
    }

    /// Total lag per group, as KEDA's scaler with `offsetResetPolicy: earliest` computes it.
    /// Blocking: call it from a blocking thread.
    pub fn sample(&self) -> anyhow::Result<GroupLag> {
        self.groups
            .iter()
            .map(|(group, topics, consumer)| {
                let lags = lag::group_lag(consumer, topics, OffsetResetPolicy::Earliest, self.timeout)
                    .with_context(|| format!("lag of group {group}"))?;
                Ok((group.clone(), lag::total(&lags)))
            })
            .collect()
    }
}

/// Samples the group lag every [`INTERVAL`] into `latest` until `stop`.
pub async fn lag_sampler(bootstrap: String, latest: Arc<Latest<GroupLag>>, mut stop: watch::Receiver<bool>) {
    let probe = match tokio::task::spawn_blocking(move || LagProbe::connect(&bootstrap)).await {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(e)) => return latest.set(Err(format!("{e:#}"))),
        Err(e) => return latest.set(Err(e.to_string())),
    };
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let p = probe.clone();
        let sample = match tokio::task::spawn_blocking(move || p.sample()).await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        latest.set(sample);
    }
}

/// `GET {base}/status` of the local autoscaler.
pub async fn autoscaler_status(client: &reqwest::Client, base: &Url) -> anyhow::Result<Scaling> {
    let mut url = base.clone();
    url.set_path("/status");
    let response = client.get(url.clone()).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("GET {url} answered {status}");
    }
    let body: AutoscalerStatus =
        response.json().await.with_context(|| format!("GET {url}: not the autoscaler's status JSON"))?;
    Ok(body.scaled_objects.into_iter().map(|s| (s.name.clone(), s)).collect())
}

/// Samples the autoscaler every [`INTERVAL`] into `latest` until `stop`.
pub async fn autoscaler_sampler(
    client: reqwest::Client,
    base: Url,
    latest: Arc<Latest<Scaling>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        latest.set(autoscaler_status(&client, &base).await.map_err(|e| format!("{e:#}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_contract_is_read_leniently() {
        let body = r#"{"scaled_objects":[
            {"name":"responder","replicas":2,"desired":3,"lag":12,"active":true,"extra":"ignored"},
            {"name":"memory","replicas":0}]}"#;
        let status: AutoscalerStatus = serde_json::from_str(body).expect("status");
        assert_eq!(status.scaled_objects.len(), 2);
        assert_eq!(status.scaled_objects[0].desired, Some(3));
        assert_eq!(status.scaled_objects[1].lag, None);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_samples_are_unknown() {
        let latest = Latest::new();
        assert_eq!(latest.fresh(), None::<i64>);
        latest.set(Ok(5));
        assert_eq!(latest.fresh(), Some(5));
        tokio::time::advance(STALE_AFTER + Duration::from_millis(1)).await;
        assert_eq!(latest.fresh(), None);
        latest.set(Err("down".into()));
        assert_eq!((latest.fresh(), latest.error()), (None, Some("down".into())));
        latest.set(Err("still down".into()));
        assert_eq!(latest.first_error(), Some("down".into()));
        assert!(latest.sampled());
    }
}
