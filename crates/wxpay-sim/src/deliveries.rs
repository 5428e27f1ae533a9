//! The notifier's records, as data: queued notification jobs and the attempts made to deliver
//! them (what `/sim/notifications` shows). Kept apart from the notifier so that the simulator's
//! state can hold them without depending on the notifier.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Pay,
    Refund,
    /// A fault: an old pay notification sent again.
    Replay,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub kind: NotifyKind,
    pub mch_id: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub url: String,
    pub body: String,
    pub due: DateTime<Utc>,
    /// Attempts already made.
    pub attempts_made: u32,
    /// Follows the retry schedule (replays do not).
    pub retry: bool,
    pub copies: u32,
    pub drop: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// XML with return_code SUCCESS, HTTP 2xx, within 5 s.
    Success,
    /// An answer, but not a success (wrong body or status).
    Fail,
    /// No answer within 5 s.
    Timeout,
    /// Could not connect / send.
    Error,
    /// Dropped by a fault; nothing was sent.
    Dropped,
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

/// One delivery attempt (one copy of it, when copies are faulted).
#[derive(Debug, Clone, Serialize)]
pub struct NotificationAttempt {
    pub seq: u64,
    pub kind: NotifyKind,
    pub mch_id: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    /// 1-based attempt number within the schedule.
    pub attempt: u32,
    /// 1-based copy number (several with the `notify_copies` fault).
    pub copy: u32,
    #[serde(serialize_with = "rfc3339")]
    pub scheduled_at: DateTime<Utc>,
    /// Simulated-clock time of the attempt.
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub url: String,
    pub http_status: Option<u16>,
    /// The merchant's reply, cut to 512 characters.
    pub reply: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub elapsed_ms: u64,
    /// What was sent.
    pub request_body: String,
}

/// How many notification attempts the simulator keeps for inspection (`/sim/notifications`):
/// the newest ones. Each holds the notification's body, and a long run would otherwise keep every
/// attempt it ever made.
pub const ATTEMPT_HISTORY: usize = 2_000;

/// The newest [`ATTEMPT_HISTORY`] notification attempts, oldest first, numbered in the order
/// they were made (a forgotten attempt keeps its number: `seq` never repeats).
#[derive(Debug)]
pub struct AttemptLog {
    kept: std::collections::VecDeque<NotificationAttempt>,
    next_seq: u64,
    capacity: usize,
}

impl Default for AttemptLog {
    fn default() -> Self {
        AttemptLog::with_capacity(ATTEMPT_HISTORY)
    }
}

impl AttemptLog {
    pub fn with_capacity(capacity: usize) -> Self {
        AttemptLog { kept: std::collections::VecDeque::new(), next_seq: 1, capacity: capacity.max(1) }
    }

    /// Keeps `attempt` with the next `seq`, forgetting the oldest beyond the capacity.
    pub fn record(&mut self, mut attempt: NotificationAttempt) {
        attempt.seq = self.next_seq;
        self.next_seq += 1;
        if self.kept.len() >= self.capacity {
            self.kept.pop_front();
        }
        self.kept.push_back(attempt);
    }

    /// The kept attempts, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &NotificationAttempt> {
        self.kept.iter()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod attempt_log_tests {
    use super::*;

    fn attempt(out_trade_no: &str) -> NotificationAttempt {
        NotificationAttempt {
            seq: 0,
            kind: NotifyKind::Pay,
            mch_id: "1900000109".into(),
            out_trade_no: out_trade_no.into(),
            out_refund_no: None,
            attempt: 1,
            copy: 1,
            scheduled_at: DateTime::<Utc>::UNIX_EPOCH,
            time: DateTime::<Utc>::UNIX_EPOCH,
            url: "http://127.0.0.1/notify".into(),
            http_status: Some(200),
            reply: String::new(),
            outcome: Outcome::Success,
            error: None,
            elapsed_ms: 0,
            request_body: "<xml/>".into(),
        }
    }

    #[test]
    fn keeps_the_newest_attempts_numbered_in_order() {
        let mut log = AttemptLog::with_capacity(3);
        for i in 1..=5 {
            log.record(attempt(&format!("order{i}")));
        }
        assert_eq!(log.len(), 3);
        let kept: Vec<(u64, &str)> = log.iter().map(|a| (a.seq, a.out_trade_no.as_str())).collect();
        assert_eq!(kept, vec![(3, "order3"), (4, "order4"), (5, "order5")]);
    }

    #[test]
    fn the_default_capacity_is_the_documented_history() {
        let mut log = AttemptLog::default();
        for _ in 0..ATTEMPT_HISTORY + 10 {
            log.record(attempt("o"));
        }
        assert_eq!(log.len(), ATTEMPT_HISTORY);
        assert_eq!(log.iter().next().map(|a| a.seq), Some(11));
    }
}
