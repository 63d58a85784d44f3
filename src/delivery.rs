//! Plain data: a delivery, what it takes to create one, the record of one attempt and the
//! outcome of one claim. No I/O here; the store reads and writes these.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a delivery stands. There is no "in flight" status: a claim is a lease on a pending row
/// (its `scheduled_for` pushed to the lease end), so a crashed worker's rows come back by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Succeeded,
    DeadLetter,
}

impl Status {
    /// Every status, in the order they are reported.
    pub const ALL: [Status; 3] = [Status::Pending, Status::Succeeded, Status::DeadLetter];

    /// The name stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::DeadLetter => "dead_letter",
        }
    }

    /// Parses a stored or user-supplied status name.
    ///
    /// # Errors
    /// A message naming the unknown status and the accepted ones.
    pub fn parse(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}: expected pending, succeeded or dead_letter")
            })
    }
}

/// One custom header kept on a delivery (after the secret filter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub key: String,
    pub value: String,
}

/// HTTP methods a delivery may use (the origin's DTO options).
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Whether a delivery with this method sends its payload as a JSON body.
/// GET and DELETE send no body (and so no Content-Type).
pub fn method_has_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// Everything needed to create a delivery. The store assigns id, uuid, status and times.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub organization_id: i64,
    pub workflow_run_id: i64,
    pub webhook_node_id: String,
    pub webhook_name: Option<String>,
    pub endpoint_url: String,
    /// Upper-case; one of [`METHODS`].
    pub http_method: String,
    /// The frozen JSON payload, as text. Stored and sent byte for byte.
    pub payload: String,
    pub custom_headers: Vec<Header>,
    pub credential_uuid: Option<String>,
    pub max_attempts: u32,
    /// When the first attempt is due; `None` means now.
    pub scheduled_for: Option<OffsetDateTime>,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub delivery_uuid: String,
    pub organization_id: i64,
    pub workflow_run_id: i64,
    pub webhook_node_id: String,
    pub webhook_name: Option<String>,
    pub endpoint_url: String,
    pub http_method: String,
    pub payload: String,
    pub custom_headers: Vec<Header>,
    pub credential_uuid: Option<String>,
    pub status: Status,
    /// Attempts started: a claim counts its attempt before the request is sent, so a crash
    /// mid-send still spends it (the origin's crash loop never counted).
    pub attempt_count: u32,
    pub max_attempts: u32,
    /// When the next attempt is due, or the lease end while one is in flight; `None` once terminal.
    pub scheduled_for: Option<OffsetDateTime>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A delivery claimed for one attempt. Outcome writes must carry `lease_token`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub delivery: Delivery,
    pub lease_token: String,
}

impl Claim {
    /// The number of the attempt this claim is for (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt_count
    }
}

/// The record of one attempt, as kept in the attempt history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt_number: u32,
    pub started_at: OffsetDateTime,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first bytes of the response body (see [`RESPONSE_EXCERPT_BYTES`]).
    pub response_excerpt: Option<String>,
}

/// How much of a response body is kept in the attempt history.
pub const RESPONSE_EXCERPT_BYTES: usize = 512;

/// `last_error` and attempt errors are cut to this many characters (the origin's 2000).
pub const MAX_ERROR_CHARS: usize = 2000;

/// Cuts `s` to at most `max` characters, on a character boundary.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// What an attempt decided for its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// 2xx: done.
    Succeeded { status_code: u16 },
    /// Transient failure: due again at `at`.
    Retry {
        at: OffsetDateTime,
        status_code: Option<u16>,
        error: String,
    },
    /// Permanent failure, or attempts exhausted.
    DeadLetter {
        status_code: Option<u16>,
        error: String,
    },
    /// Claimed but never sent (shutdown): due again at `at` without spending the attempt.
    Release { at: OffsetDateTime },
}

/// One outcome write, fenced by the claim's lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub delivery_id: i64,
    pub lease_token: String,
    pub transition: Transition,
    /// The attempt to append to the history; `None` for [`Transition::Release`].
    pub attempt: Option<Attempt>,
}

/// A delivery with its attempt history, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryDetail {
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// Filters for listing deliveries. Listing is keyset-paginated by id, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub organization_id: Option<i64>,
    /// Only ids greater than this (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size; the store clamps it to 1..=[`MAX_PAGE`].
    pub limit: u32,
}

/// The largest page a list returns.
pub const MAX_PAGE: u32 = 1000;

/// One page of a listing. `next_after` is `Some` when more rows may follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub deliveries: Vec<Delivery>,
    pub next_after: Option<i64>,
}

/// What a redrive of one delivery found.
#[derive(Debug, Clone, PartialEq)]
pub enum Redrive {
    /// The delivery was dead-lettered and is now pending with a fresh attempt budget.
    Redriven(Box<Delivery>),
    /// The delivery is not dead-lettered; nothing changed.
    NotDeadLetter(Status),
    NotFound,
}

/// Counts for operators and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub pending: u64,
    pub succeeded: u64,
    pub dead_letter: u64,
    /// Pending rows due now (not leased, not waiting for a retry).
    pub due: u64,
    /// How long the oldest due row has been waiting, in whole milliseconds.
    pub oldest_due_ms: Option<u64>,
}

/// A delivery whose lease ran out on its final attempt and was dead-lettered by
/// [`crate::store::Store::expire_final_leases`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: i64,
    pub delivery_uuid: String,
    pub attempt_count: u32,
}

/// A credential as stored: the secret part sealed by [`crate::secret_box`].
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub credential_uuid: String,
    pub organization_id: i64,
    pub credential_type: String,
    pub sealed_data: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for StoredCredential {
    // Sealed bytes are not secret, but there is nothing useful to print in them either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("credential_uuid", &self.credential_uuid)
            .field("organization_id", &self.organization_id)
            .field("credential_type", &self.credential_type)
            .finish_non_exhaustive()
    }
}

/// One schema migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: u32,
    pub name: &'static str,
    pub applied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_refuses_unknown() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Ok(s));
        }
        assert!(
            Status::parse("in_flight")
                .unwrap_err()
                .contains("in_flight")
        );
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
        assert_eq!(truncate_chars("", 0), "");
    }
}
