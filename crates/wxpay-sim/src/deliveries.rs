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
