//! [`Fields`]: the flat name -> value map that every v2 message is on the wire.
//!
//! Kept sorted by name in ASCII byte order, which is exactly the order the signature's canonical
//! string needs, and holding *every* received field (unknown ones too) so that verification
//! covers what was actually sent.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::types::FieldError;

/// The map itself. Two details keep parsing cheap (one allocation for all the values instead of
/// one per field, none for the usual names) without changing what callers see:
///
/// * every value lives in one `String`, `values`; the map holds where (`Span`). Replacing or
///   removing a value leaves its old bytes behind until they outweigh the live ones, then the
///   live values are copied to a fresh buffer (so the buffer stays at most about twice the live
///   bytes, at amortised constant cost per change);
/// * names are `Cow`, so that the XML reader can use a `&'static str` for the names WeChat sends
///   (see `known_name`) instead of allocating each one. They compare and sort exactly as the
///   `String`s they stand for.
///
/// Equality and `Debug` are those of the name -> value map (`Fields({"a": "1"})`).
#[derive(Clone, Default)]
pub struct Fields {
    map: BTreeMap<Cow<'static, str>, Span>,
    values: String,
    /// Bytes of `values` no longer referenced by `map`.
    stale: usize,
}

/// Where a value is in [`Fields::values`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn len(self) -> usize {
        self.end - self.start
    }
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field (replacing any earlier value).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let span = self.push_value(&value.into());
        if let Some(old) = self.map.insert(Cow::Owned(name.into()), span) {
            self.forget(old);
        }
        self
    }

    /// Sets a field only when the value is `Some` and not empty (empty values are never signed).
    pub fn set_opt(&mut self, name: &str, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(v) = value {
            let v = v.into();
            if !v.is_empty() {
                self.set(name, v);
            }
        }
        self
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(|&span| self.value(span))
    }

    /// A present, non-empty value.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// A required, non-empty value, or a [`FieldError`] naming the field.
    pub fn require(&self, name: &str) -> Result<&str, FieldError> {
        self.non_empty(name).ok_or_else(|| FieldError::missing(name))
    }

    /// The values of several fields, in the order of `names` (`None` when absent), found in one
    /// pass over the fields rather than one lookup per name: typed messages read many at once.
    pub(crate) fn get_many<const N: usize>(&self, names: [&str; N]) -> [Option<&str>; N] {
        let mut values = [None; N];
        for (name, value) in self.iter() {
            if let Some(i) = names.iter().position(|n| *n == name) {
                values[i] = Some(value);
            }
        }
        values
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let span = self.map.remove(name)?;
        let value = self.value(span).to_owned();
        self.forget(span);
        Some(value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Fields in ASCII order of their names.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, &span)| (k.as_ref(), self.value(span)))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts a field that must not already be present (parsers use this to reject duplicates).
    pub(crate) fn insert_new(&mut self, name: String, value: String) -> Result<(), String> {
        use std::collections::btree_map::Entry;
        match self.map.entry(Cow::Owned(name)) {
            Entry::Occupied(e) => Err(e.key().to_string()),
            Entry::Vacant(e) => {
                e.insert(push_value(&mut self.values, &value));
                Ok(())
            }
        }
    }

    /// Builds the map from the XML reader's fast path: `values` holds every value back to back,
    /// `fields` are sorted by name with no name twice, each with where its value is in `values`.
    pub(crate) fn from_sorted_unique(values: String, fields: Vec<(&str, Range<usize>)>) -> Fields {
        debug_assert!(fields.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(fields.iter().all(|(_, r)| values.get(r.clone()).is_some()));
        let map = fields
            .into_iter()
            .map(|(name, range)| {
                let name = known_name(name).map_or_else(|| Cow::Owned(name.to_owned()), Cow::Borrowed);
                (name, Span { start: range.start, end: range.end })
            })
            .collect();
        Fields { map, values, stale: 0 }
    }

    fn value(&self, span: Span) -> &str {
        &self.values[span.start..span.end]
    }

    fn push_value(&mut self, value: &str) -> Span {
        push_value(&mut self.values, value)
    }

    /// A value is no longer referenced; compacts once stale bytes outweigh live ones.
    fn forget(&mut self, span: Span) {
        self.stale += span.len();
        if self.stale > 256 && self.stale > self.values.len() / 2 {
            self.compact();
        }
    }

    /// Copies the live values to a new buffer.
    fn compact(&mut self) {
        let mut values = String::with_capacity(self.values.len() - self.stale);
        for span in self.map.values_mut() {
            let start = values.len();
            values.push_str(&self.values[span.start..span.end]);
            *span = Span { start, end: values.len() };
        }
        self.values = values;
        self.stale = 0;
    }
}

/// Appends a value to the buffer; where it is.
fn push_value(values: &mut String, value: &str) -> Span {
    let start = values.len();
    values.push_str(value);
    Span { start, end: values.len() }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Fields {}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Map<'a>(&'a Fields);
        impl fmt::Debug for Map<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("Fields").field(&Map(self)).finish()
    }
}

/// The static copy of a field name of the pay API (the envelope, payment and refund
/// notifications, and the responses we read), so that parsing needs no allocation for it.
/// Any other name is simply allocated.
fn known_name(name: &str) -> Option<&'static str> {
    macro_rules! known {
        ($($n:literal)*) => {
            match name {
                $($n => Some($n),)*
                _ => None,
            }
        };
    }
    known!(
        "appid" "mch_id" "sub_appid" "sub_mch_id" "nonce_str" "sign" "sign_type" "return_code" "return_msg"
        "result_code" "err_code" "err_code_des" "device_info" "openid" "sub_openid" "is_subscribe"
        "sub_is_subscribe" "trade_type" "trade_state" "trade_state_desc" "bank_type" "total_fee"
        "settlement_total_fee" "fee_type" "cash_fee" "cash_fee_type" "coupon_fee" "coupon_count"
        "coupon_type_0" "coupon_id_0" "coupon_fee_0" "transaction_id" "out_trade_no" "attach" "time_end"
        "promotion_detail" "prepay_id" "code_url" "mweb_url" "req_info" "refund_id" "out_refund_no"
        "refund_fee" "settlement_refund_fee" "refund_status" "success_time" "refund_recv_accout"
        "refund_account" "refund_request_source" "refund_channel" "refund_count" "total_refund_count"
        "cash_refund_fee" "coupon_refund_fee" "coupon_refund_count" "short_url"
    )
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Fields {
    /// Like a `BTreeMap`: a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut fields = Fields::new();
        for (k, v) in iter {
            fields.set(k, v);
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    mod former {
        #[derive(Debug)]
        #[allow(dead_code)] // read by `Debug` only
        pub struct Fields(pub std::collections::BTreeMap<String, String>);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(String, String),
        SetOpt(String, Option<String>),
        Remove(String),
        InsertNew(String, String),
        Clone,
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["appid", "sign", "a", "b", "B", "zz", "中"]).prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9]{1,8}", ".{0,4}", "[a-z]{100,300}"]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (name(), value()).prop_map(|(n, v)| Op::Set(n, v)),
            1 => (name(), prop::option::of(value())).prop_map(|(n, v)| Op::SetOpt(n, v)),
            2 => name().prop_map(Op::Remove),
            2 => (name(), value()).prop_map(|(n, v)| Op::InsertNew(n, v)),
            1 => Just(Op::Clone),
        ]
    }

    fn assert_same(f: &Fields, model: &BTreeMap<String, String>) {
        assert_eq!(f.len(), model.len());
        assert_eq!(f.is_empty(), model.is_empty());
        assert!(f.iter().eq(model.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        for n in ["appid", "sign", "a", "b", "B", "zz", "中", "absent"] {
            assert_eq!(f.get(n), model.get(n).map(String::as_str));
            assert_eq!(f.contains(n), model.contains_key(n));
        }
        // `Debug` prints what the derived `Debug` of the former `Fields(BTreeMap<String, String>)` did.
        let former = former::Fields(model.clone());
        assert_eq!(format!("{f:?}"), format!("{former:?}"));
        assert_eq!(format!("{f:#?}"), format!("{former:#?}"));
        // Stale bytes never outweigh live ones by much.
        let live: usize = model.values().map(String::len).sum();
        assert!(f.values.len() <= 2 * live + 2 * 300 + 256, "{} bytes for {live} live", f.values.len());
    }

    proptest! {
        /// The one-buffer map behaves as the `BTreeMap<String, String>` it replaced.
        #[test]
        fn behaves_like_a_btreemap(ops in prop::collection::vec(op(), 0..60)) {
            let mut f = Fields::new();
            let mut model = BTreeMap::<String, String>::new();
            for op in ops {
                match op {
                    Op::Set(n, v) => {
                        f.set(n.clone(), v.clone());
                        model.insert(n, v);
                    }
                    Op::SetOpt(n, v) => {
                        f.set_opt(&n, v.clone());
                        if let Some(v) = v.filter(|v| !v.is_empty()) {
                            model.insert(n, v);
                        }
                    }
                    Op::Remove(n) => prop_assert_eq!(f.remove(&n), model.remove(&n)),
                    Op::InsertNew(n, v) => {
                        let expected = if model.contains_key(&n) { Err(n.clone()) } else { Ok(()) };
                        if expected.is_ok() {
                            model.insert(n.clone(), v.clone());
                        }
                        prop_assert_eq!(f.insert_new(n, v), expected);
                    }
                    Op::Clone => {
                        let copy = f.clone();
                        prop_assert_eq!(&copy, &f);
                        f = copy;
                    }
                }
                assert_same(&f, &model);
            }
            let collected: Fields = model.clone().into_iter().collect();
            prop_assert_eq!(collected, f);
        }

        #[test]
        fn sorted_build_and_get_many_agree_with_set_and_get(
            model in prop::collection::btree_map("[a-z_]{1,12}|appid|mch_id|sign|total_fee", ".{0,12}", 0..20),
        ) {
            let mut values = String::new();
            let mut fields = Vec::new();
            for (k, v) in &model {
                fields.push((k.as_str(), values.len()..values.len() + v.len()));
                values.push_str(v);
            }
            let built = Fields::from_sorted_unique(values, fields);
            let set: Fields = model.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(&built, &set);
            assert_same(&built, &model);
            let names = ["appid", "mch_id", "sign", "total_fee", "a", "nope"];
            prop_assert_eq!(built.get_many(names), names.map(|n| built.get(n)));
        }
    }

    #[test]
    fn replacing_a_value_again_and_again_keeps_the_buffer_bounded() {
        let mut f = Fields::new().with("a", "1");
        for i in 0..1000 {
            f.set("b", format!("{i:0>300}"));
            assert!(f.values.len() <= 2 * 301 + 256);
        }
        assert_eq!(f.get("b"), Some(format!("{:0>300}", 999).as_str()));
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.remove("b").map(|v| v.len()), Some(300));
        assert_eq!(f, Fields::new().with("a", "1"));
    }

    #[test]
    fn duplicate_names_keep_the_last_value_and_known_names_need_no_allocation() {
        let f: Fields = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(f.get("a"), Some("3"));
        assert_eq!(f.len(), 2);
        assert_eq!(known_name("appid"), Some("appid"));
        assert_eq!(known_name("appid2"), None);
        let parsed = Fields::from_sorted_unique("wx11".to_owned(), vec![("appid", 0..3), ("x", 3..4)]);
        assert!(matches!(parsed.map.keys().next(), Some(Cow::Borrowed("appid"))));
        assert_eq!(parsed, Fields::new().with("x", "1").with("appid", "wx1"));
    }
}
