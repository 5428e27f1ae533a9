//! The v2 signature (签名算法, spec §1).
//!
//! Canonical string: every field except `sign`, empty values left out, names in ASCII byte order,
//! `k=v` joined with `&`, raw values (no escaping), then `&key=API_KEY`. MD5 or HMAC-SHA256 (keyed
//! with the same API key) over it, upper-case hex.
//!
//! **Lower-case signatures.** We always *emit* upper-case hex, as WeChat does. When *verifying* we
//! accept the hex digits in either case: the digest is the same, nothing is weakened, real WeChat
//! was observed to accept a lower-case sign (spec §1.1), and some older merchant SDKs emit one.
//! The comparison itself is constant-time (`subtle`).

use std::fmt;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::fields::Fields;
use crate::types::FieldError;

/// `sign_type`: `MD5` (the default when absent) or `HMAC-SHA256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SignType {
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
}

impl SignType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// Reads `sign_type` from a message: absent or empty means MD5; anything unknown is an error.
    pub fn from_fields(fields: &Fields) -> Result<SignType, FieldError> {
        match fields.non_empty("sign_type") {
            None => Ok(SignType::Md5),
            Some(s) => s.parse(),
        }
    }

    /// The algorithm a signature of this length was made with: 32 hex digits MD5, 64 HMAC-SHA256.
    /// Used for notifications, which usually omit `sign_type` even when signed with HMAC-SHA256.
    pub fn from_sign_len(sign: &str) -> Option<SignType> {
        match sign.len() {
            32 => Some(SignType::Md5),
            64 => Some(SignType::HmacSha256),
            _ => None,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }
}

impl std::str::FromStr for SignType {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        match s {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            _ => Err(FieldError::new("sign_type", format!("must be MD5 or HMAC-SHA256, got {s:?}"))),
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The merchant's API key (API密钥, 32 characters). Never printed: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }
    /// The raw key, for the few places that need it (signing, AES key derivation).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Real API keys are exactly 32 characters; anything else is almost always the wrong secret
    /// (the AppSecret or the APIv3 key).
    pub fn looks_valid(&self) -> bool {
        self.0.len() == 32 && self.0.bytes().all(|b| b.is_ascii_alphanumeric())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The string that is hashed, *without* the trailing `&key=...` (what `wxpay verify` shows).
pub fn canonical_string<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = fields.into_iter().filter(|(k, v)| *k != "sign" && !v.is_empty()).collect();
    // Byte order of the names; a BTreeMap source is already sorted, so this is a cheap check.
    pairs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Signs `fields` (ignoring any `sign` among them) and returns upper-case hex.
pub fn sign<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>, key: &ApiKey, sign_type: SignType) -> String {
    let mut pairs: Vec<(&str, &str)> = fields.into_iter().filter(|(k, v)| is_signed(k, v)).collect();
    // Already sorted when it comes from `Fields` (a BTreeMap): then one pass is enough.
    if !pairs.windows(2).all(|w| w[0].0.as_bytes() <= w[1].0.as_bytes()) {
        pairs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    digest_sorted(pairs.into_iter(), key, sign_type).as_str().to_owned()
}

/// Whether a field is part of the canonical string: not `sign`, not empty.
fn is_signed(name: &str, value: &str) -> bool {
    name != "sign" && !value.is_empty()
}

/// The signature over fields already in byte order of their names (a [`Fields`] iterator, or a
/// sorted list), streamed into the hasher without building the string or collecting the fields.
fn digest_sorted<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>, key: &ApiKey, sign_type: SignType) -> HexDigest {
    let pairs = fields.filter(|(k, v)| is_signed(k, v));
    match sign_type {
        SignType::Md5 => {
            let mut h = Md5::new();
            feed(pairs, key, |b| h.update(b));
            HexDigest::upper(&h.finalize())
        }
        SignType::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key length");
            feed(pairs, key, |b| mac.update(b));
            HexDigest::upper(&mac.finalize().into_bytes())
        }
    }
}

/// Streams `k1=v1&k2=v2...&key=KEY` into a hasher without building the string.
fn feed<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, key: &ApiKey, mut update: impl FnMut(&[u8])) {
    for (k, v) in pairs {
        update(k.as_bytes());
        update(b"=");
        update(v.as_bytes());
        update(b"&");
    }
    update(b"key=");
    update(key.expose().as_bytes());
}

/// Upper-case hex of a digest of up to 32 bytes, on the stack.
struct HexDigest {
    buf: [u8; 64],
    len: usize,
}

impl HexDigest {
    fn upper(digest: &[u8]) -> HexDigest {
        debug_assert!(digest.len() <= 32);
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut buf = [0u8; 64];
        for (out, byte) in buf.chunks_exact_mut(2).zip(digest) {
            out[0] = DIGITS[usize::from(byte >> 4)];
            out[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        HexDigest { buf, len: 2 * digest.len() }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("hex digits are ASCII")
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the message has no sign field")]
    Missing,
    #[error("sign has {0} characters; expected 32 (MD5) or 64 (HMAC-SHA256) hex digits")]
    BadLength(usize),
    #[error("sign_type: {0}")]
    BadSignType(String),
    #[error("sign does not match ({0} over the canonical string)")]
    Mismatch(SignType),
}

/// Verifies the `sign` field of `fields` with the given algorithm, in constant time.
pub fn verify(fields: &Fields, key: &ApiKey, sign_type: SignType) -> Result<(), SignError> {
    let received = fields.get("sign").filter(|s| !s.is_empty()).ok_or(SignError::Missing)?;
    if received.len() != sign_type.hex_len() {
        return Err(SignError::BadLength(received.len()));
    }
    // `Fields` iterates in byte order of the names: no need to collect and sort.
    let expected = digest_sorted(fields.iter(), key, sign_type);
    // Hex digits compared case-insensitively (see the module docs), still in constant time.
    let mut received_upper = [0u8; 64];
    let received_upper = &mut received_upper[..received.len()];
    received_upper.copy_from_slice(received.as_bytes());
    received_upper.make_ascii_uppercase();
    if bool::from(expected.as_bytes().ct_eq(received_upper)) {
        Ok(())
    } else {
        Err(SignError::Mismatch(sign_type))
    }
}

/// Verifies a message whose algorithm is declared by its own `sign_type` field (requests, and
/// responses where the caller knows no better). Absent means MD5.
pub fn verify_declared(fields: &Fields, key: &ApiKey) -> Result<SignType, SignError> {
    let sign_type = SignType::from_fields(fields).map_err(|e| SignError::BadSignType(e.problem))?;
    verify(fields, key, sign_type).map(|()| sign_type)
}

/// Verifies a notification: `sign_type` when present, otherwise the algorithm implied by the
/// signature's length (WeChat usually omits `sign_type` even for HMAC-SHA256 notifications).
pub fn verify_notification(fields: &Fields, key: &ApiKey) -> Result<SignType, SignError> {
    let sign_type = if fields.non_empty("sign_type").is_some() {
        SignType::from_fields(fields).map_err(|e| SignError::BadSignType(e.problem))?
    } else {
        let received = fields.get("sign").filter(|s| !s.is_empty()).ok_or(SignError::Missing)?;
        SignType::from_sign_len(received).ok_or(SignError::BadLength(received.len()))?
    };
    verify(fields, key, sign_type).map(|()| sign_type)
}

/// Signs `fields` in place: sets `sign` (and `sign_type` when not MD5 and asked to declare it).
pub fn sign_fields(fields: &mut Fields, key: &ApiKey, sign_type: SignType) {
    fields.remove("sign");
    let s = sign(fields.iter(), key, sign_type);
    fields.set("sign", s);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const DOC_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    fn doc_fields() -> Fields {
        [
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]
        .into_iter()
        .collect()
    }

    fn key() -> ApiKey {
        ApiKey::new(DOC_KEY)
    }

    #[test]
    fn v1_doc_example_md5() {
        let f = doc_fields();
        assert_eq!(
            canonical_string(f.iter()),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA"
        );
        assert_eq!(sign(f.iter(), &key(), SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
    }

    #[test]
    fn v2_doc_example_hmac() {
        assert_eq!(
            sign(doc_fields().iter(), &key(), SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn v3_v4_wechatpy_vectors() {
        let f: Fields = [("test1", "test1"), ("test2", "test2")].into_iter().collect();
        assert_eq!(sign(f.iter(), &key(), SignType::Md5), "1E3A8D73B5A4AEE787C0F68B5DAB8520");
        assert_eq!(
            sign(f.iter(), &key(), SignType::HmacSha256),
            "EDAC6D70D2FDF5A2382F8204FC96A1918017E46ACC5297F565ED1A7610ACF659"
        );
    }

    #[test]
    fn v6_sign_type_is_part_of_the_string() {
        let f = doc_fields().with("sign_type", "HMAC-SHA256");
        assert_eq!(
            sign(f.iter(), &key(), SignType::HmacSha256),
            "2C9DF1156522C0B2B03B4DBF3BCA5CACB602CBD5CA0F9E112458CF3E9855303B"
        );
        let f = doc_fields().with("sign_type", "MD5");
        assert_eq!(sign(f.iter(), &key(), SignType::Md5), "6B4978B16793D0C2604CD59C47425A27");
    }

    #[test]
    fn v7_empty_values_are_left_out() {
        let f = doc_fields().with("attach", "");
        assert_eq!(sign(f.iter(), &key(), SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
    }

    #[test]
    fn v7b_utf8_values_are_signed_raw() {
        let f = doc_fields().with("body", "腾讯充值中心-QQ会员充值");
        assert_eq!(sign(f.iter(), &key(), SignType::Md5), "385985D44CFE023026D6429EA056492E");
    }

    #[test]
    fn sign_field_itself_is_excluded_and_unknown_fields_are_included() {
        let mut f = doc_fields();
        sign_fields(&mut f, &key(), SignType::Md5);
        assert_eq!(f.get("sign"), Some("9A0A8659F005D6984697E2CA0A9CF3B7"));
        assert!(verify(&f, &key(), SignType::Md5).is_ok());
        f.set("brand_new_field", "x");
        assert_eq!(verify(&f, &key(), SignType::Md5), Err(SignError::Mismatch(SignType::Md5)));
    }

    #[test]
    fn names_sort_by_ascii_bytes_case_sensitive() {
        let f: Fields = [("appid", "1"), ("appId", "2"), ("Zeta", "3")].into_iter().collect();
        assert_eq!(canonical_string(f.iter()), "Zeta=3&appId=2&appid=1");
    }

    #[test]
    fn lower_case_sign_is_accepted_wrong_length_is_not() {
        let mut f = doc_fields();
        f.set("sign", "9a0a8659f005d6984697e2ca0a9cf3b7");
        assert!(verify(&f, &key(), SignType::Md5).is_ok());
        assert_eq!(verify(&f, &key(), SignType::HmacSha256), Err(SignError::BadLength(32)));
        f.remove("sign");
        assert_eq!(verify(&f, &key(), SignType::Md5), Err(SignError::Missing));
    }

    #[test]
    fn notifications_pick_the_algorithm_from_the_sign_length() {
        let mut f = doc_fields();
        sign_fields(&mut f, &key(), SignType::HmacSha256);
        assert_eq!(verify_notification(&f, &key()), Ok(SignType::HmacSha256));
        let mut f = doc_fields();
        sign_fields(&mut f, &key(), SignType::Md5);
        assert_eq!(verify_notification(&f, &key()), Ok(SignType::Md5));
        f.set("sign", "ABC");
        assert_eq!(verify_notification(&f, &key()), Err(SignError::BadLength(3)));
    }

    #[test]
    fn declared_sign_type_must_be_known() {
        let mut f = doc_fields().with("sign_type", "SHA1");
        f.set("sign", "9A0A8659F005D6984697E2CA0A9CF3B7");
        assert!(matches!(verify_declared(&f, &key()), Err(SignError::BadSignType(_))));
    }

    /// The signature as the spec words it: hash of `canonical_string&key=KEY`, upper-case hex.
    fn reference_sign(pairs: &[(String, String)], key: &ApiKey, sign_type: SignType) -> String {
        let canonical = canonical_string(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let text = if canonical.is_empty() {
            format!("key={}", key.expose())
        } else {
            format!("{canonical}&key={}", key.expose())
        };
        match sign_type {
            SignType::Md5 => hex::encode_upper(Md5::digest(text.as_bytes())),
            SignType::HmacSha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).unwrap();
                mac.update(text.as_bytes());
                hex::encode_upper(mac.finalize().into_bytes())
            }
        }
    }

    proptest::proptest! {
        /// Streaming (sorted or not, from `Fields` or a list) gives the spec's signature.
        #[test]
        fn streamed_signature_matches_the_spelled_out_one(
            pairs in proptest::collection::vec(("[a-zA-Z_]{1,6}|sign", ".{0,10}"), 0..12),
            hmac in proptest::bool::ANY,
        ) {
            let st = if hmac { SignType::HmacSha256 } else { SignType::Md5 };
            let mut unique = pairs.clone();
            unique.sort_by(|a, b| a.0.cmp(&b.0));
            unique.dedup_by(|a, b| a.0 == b.0);
            let expected = reference_sign(&unique, &key(), st);
            let fields: Fields = unique.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            proptest::prop_assert_eq!(&sign(fields.iter(), &key(), st), &expected);
            unique.reverse();
            proptest::prop_assert_eq!(&sign(unique.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key(), st), &expected);
            let mut signed = fields.clone();
            signed.set("sign", expected.to_lowercase());
            proptest::prop_assert_eq!(verify(&signed, &key(), st), Ok(()));
        }
    }

    #[test]
    fn api_key_debug_is_redacted() {
        assert!(!format!("{:?}", key()).contains(DOC_KEY));
        assert!(key().looks_valid());
        assert!(!ApiKey::new("short").looks_valid());
    }
}
