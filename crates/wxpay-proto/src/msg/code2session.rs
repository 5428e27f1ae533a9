//! Mini-program login: `GET /sns/jscode2session` (auth.code2Session, spec §10). JSON, not XML.
//! Successful answers usually omit `errcode` (treated as 0).

use std::fmt;

use serde::{Deserialize, Serialize};

/// `errcode` values (spec §10).
pub mod errcode {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_CODE: i64 = 40029;
    pub const FREQUENCY_LIMIT: i64 = 45011;
    pub const CODE_BLOCKED: i64 = 40226;
    pub const CODE_BEEN_USED: i64 = 40163;
    pub const INVALID_APPID: i64 = 40013;
    pub const INVALID_SECRET: i64 = 40125;
}

/// The session key WeChat hands back. Never printed, returned to a client, logged or stored in
/// the database: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionKey(String);

impl SessionKey {
    pub fn new(s: impl Into<String>) -> Self {
        SessionKey(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// The wire JSON, both shapes in one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Code2SessionWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_key: Option<SessionKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code2Session {
    pub openid: String,
    pub session_key: SessionKey,
    pub unionid: Option<String>,
}

/// A WeChat error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jscode2session errcode {errcode}: {errmsg}")]
pub struct Code2SessionError {
    pub errcode: i64,
    pub errmsg: String,
}

impl Code2SessionError {
    /// Worth trying again later with a *new* code (the old one may be spent): system busy and
    /// the rate limit.
    pub fn is_retryable(&self) -> bool {
        matches!(self.errcode, errcode::SYSTEM_BUSY | errcode::FREQUENCY_LIMIT)
    }
}

impl Code2SessionWire {
    pub fn into_result(self) -> Result<Code2Session, Code2SessionError> {
        match self.errcode {
            Some(code) if code != 0 => {
                Err(Code2SessionError { errcode: code, errmsg: self.errmsg.unwrap_or_default() })
            }
            _ => match (self.openid, self.session_key) {
                (Some(openid), Some(session_key)) if !openid.is_empty() => {
                    Ok(Code2Session { openid, session_key, unionid: self.unionid.filter(|u| !u.is_empty()) })
                }
                _ => Err(Code2SessionError {
                    errcode: errcode::SYSTEM_BUSY,
                    errmsg: "answer has no openid/session_key".into(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_without_errcode_and_errors_with_it() {
        let ok: Code2SessionWire =
            serde_json::from_str(r#"{"openid":"o1","session_key":"5tF5KuDigyB6e4m7FigHvw=="}"#).unwrap();
        let ok = ok.into_result().unwrap();
        assert_eq!(ok.openid, "o1");
        assert!(!format!("{ok:?}").contains("5tF5"), "session_key must not appear in Debug");
        let zero: Code2SessionWire =
            serde_json::from_str(r#"{"openid":"o1","session_key":"k","unionid":"u","errcode":0,"errmsg":"ok"}"#)
                .unwrap();
        assert_eq!(zero.into_result().unwrap().unionid.as_deref(), Some("u"));
        let err: Code2SessionWire = serde_json::from_str(r#"{"errcode":40163,"errmsg":"code been used"}"#).unwrap();
        let err = err.into_result().unwrap_err();
        assert_eq!(err.errcode, errcode::CODE_BEEN_USED);
        assert!(!err.is_retryable());
    }
}
