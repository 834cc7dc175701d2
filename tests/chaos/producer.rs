//! The producer: POSTs through nginx with an `Idempotency-Key` each, retried until `201`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::cluster::Nginx;
use crate::util::{lock, Clock};
use crate::{FLOOD_BATCH, SERVICE_KEY};

pub(crate) struct CreatedRow {
    pub(crate) id: String,
    pub(crate) user: String,
    pub(crate) seq: i64,
    /// When the 201 came back (ms on the run clock).
    pub(crate) t201: f64,
    pub(crate) flood: bool,
}

pub(crate) struct Failure {
    pub(crate) t: f64,
    /// None: a transport error (no HTTP answer at all).
    pub(crate) status: Option<u16>,
    pub(crate) detail: String,
}

#[derive(Default)]
pub(crate) struct ProducerLog {
    pub(crate) created: Vec<CreatedRow>,
    pub(crate) failures: Vec<Failure>,
    /// A failed attempt (5xx or no answer) whose retry was an idempotent replay: the failed
    /// attempt had in fact committed.
    pub(crate) replays_after_failure: usize,
    pub(crate) gave_up: Vec<String>,
    pub(crate) requests: usize,
}

/// POSTs through nginx, each request with its own `Idempotency-Key`, retried with the same key
/// on any non-2xx answer or transport error until `201`.
#[derive(Clone)]
pub(crate) struct Producer {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) clock: Clock,
    pub(crate) log: Arc<Mutex<ProducerLog>>,
}

impl Producer {
    pub(crate) fn new(nginx: &Nginx, clock: Clock) -> Self {
        Producer {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
            url: format!("{}/api/v1/messages", nginx.http_base()),
            clock,
            log: Arc::new(Mutex::new(ProducerLog::default())),
        }
    }

    /// The regular load: `n` messages at `rate`/s, round-robin over the users.
    pub(crate) async fn run(self, users: Arc<Vec<String>>, n: usize, rate: f64) {
        self.run_from(users, 0, n, rate).await
    }

    /// Messages `first..first + n` (the `k` of their Idempotency-Key `m-<k>` and content), at
    /// `rate`/s, round-robin over the users: a load in phases keeps its keys apart.
    pub(crate) async fn run_from(self, users: Arc<Vec<String>>, first: usize, n: usize, rate: f64) {
        let in_flight = Arc::new(Semaphore::new(32));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for k in first..first + n {
            let since_start = (k - first) as f64 / rate;
            tokio::time::sleep_until(start + Duration::from_secs_f64(since_start)).await;
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let user = &users[k % users.len()];
            let body = json!({
                "to_user": user, "title": format!("chaos {k}"), "content": format!("message {k} for {user}"),
                "type": "chaos", "data": {"k": k},
            });
            let p = self.clone();
            tasks.push(tokio::spawn(async move {
                p.post_until_created(format!("m-{k}"), body, false).await;
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    pub(crate) async fn post_until_created(&self, key: String, body: Value, flood: bool) {
        let started = Instant::now();
        let mut failed_before = false;
        let mut attempt = 0u32;
        loop {
            lock(&self.log).requests += 1;
            let sent = self
                .http
                .post(&self.url)
                .bearer_auth(SERVICE_KEY)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let t = self.clock.ms();
            let failure = match sent {
                Ok(r) if r.status() == 201 => {
                    let replayed = r.headers().contains_key("idempotent-replayed");
                    match r.json::<Value>().await {
                        Ok(answer) => {
                            let mut log = lock(&self.log);
                            if replayed && failed_before {
                                log.replays_after_failure += 1;
                            }
                            for m in answer["messages"].as_array().into_iter().flatten() {
                                log.created.push(CreatedRow {
                                    id: m["id"].as_str().unwrap_or_default().to_string(),
                                    user: m["to_user"].as_str().unwrap_or_default().to_string(),
                                    seq: m["seq"].as_i64().unwrap_or(-1),
                                    t201: t,
                                    flood,
                                });
                            }
                            return;
                        }
                        Err(e) => Failure {
                            t,
                            status: None,
                            detail: format!("201 with an unreadable body: {e}"),
                        },
                    }
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    Failure {
                        t,
                        status: Some(status),
                        detail: text.chars().take(160).collect(),
                    }
                }
                Err(e) => Failure {
                    t,
                    status: None,
                    detail: e.to_string(),
                },
            };
            failed_before = true;
            lock(&self.log).failures.push(failure);
            attempt += 1;
            if started.elapsed() > Duration::from_secs(180) {
                lock(&self.log).gave_up.push(key);
                return;
            }
            tokio::time::sleep(Duration::from_millis((100u64 << attempt.min(4)).min(1500))).await;
        }
    }

    /// One request of `FLOOD_BATCH` large messages (8 KiB content, 15 KB data) for one user.
    pub(crate) async fn flood(&self, user: &str, key: String) {
        let content = "x".repeat(8000);
        let pad = "y".repeat(15_000);
        let messages: Vec<Value> = (0..FLOOD_BATCH)
            .map(|i| json!({"to_user": user, "title": format!("flood {i}"), "content": content, "type": "flood", "data": {"pad": pad}}))
            .collect();
        self.post_until_created(key, json!({ "messages": messages }), true)
            .await;
    }
}

/// One topic event the service accepted (`202`).
pub(crate) struct TopicPub {
    pub(crate) topic: String,
    /// The publisher's counter in `data.i`: 1, 2, ... per topic, in publish order.
    pub(crate) i: i64,
    pub(crate) id: String,
    /// When the POST was sent (run clock ms): a client subscribed before this must get it,
    /// unless the broker lost it.
    pub(crate) sent: f64,
}

#[derive(Default)]
pub(crate) struct TopicLog {
    pub(crate) published: Vec<TopicPub>,
    /// POSTs not answered `202` (not retried: the id is the server's, a retry of one that had
    /// committed would be a second event).
    pub(crate) failures: Vec<String>,
}

/// Publishes live topic events (`POST /api/v1/topics/{topic}/events`) through nginx: each topic
/// one event per `every`, one at a time (so `data.i` follows the commit order), until `stop`.
#[derive(Clone)]
pub(crate) struct TopicPublisher {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) clock: Clock,
    pub(crate) log: Arc<Mutex<TopicLog>>,
}

impl TopicPublisher {
    pub(crate) fn new(nginx: &Nginx, clock: Clock) -> Self {
        TopicPublisher {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
            base: nginx.http_base(),
            clock,
            log: Arc::new(Mutex::new(TopicLog::default())),
        }
    }

    pub(crate) async fn run(
        self,
        topics: Vec<String>,
        every: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let tasks: Vec<_> = topics
            .into_iter()
            .map(|topic| tokio::spawn(self.clone().one_topic(topic, every, stop.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn one_topic(
        self,
        topic: String,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let url = format!("{}/api/v1/topics/{topic}/events", self.base);
        let mut tick = tokio::time::interval(every);
        for i in 1.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let sent = self.clock.ms();
            let answer = self
                .http
                .post(&url)
                .bearer_auth(SERVICE_KEY)
                .json(&json!({ "data": { "i": i } }))
                .send()
                .await;
            let outcome = match answer {
                Ok(r) if r.status() == 202 => match r.json::<Value>().await {
                    Ok(body) => Ok(body["id"].as_str().unwrap_or_default().to_string()),
                    Err(e) => Err(format!("202 with an unreadable body: {e}")),
                },
                Ok(r) => Err(format!("{topic} #{i}: {}", r.status())),
                Err(e) => Err(format!("{topic} #{i}: {e}")),
            };
            let mut log = lock(&self.log);
            match outcome {
                Ok(id) => log.published.push(TopicPub {
                    topic: topic.clone(),
                    i,
                    id,
                    sent,
                }),
                Err(e) => log.failures.push(e),
            }
        }
    }
}
