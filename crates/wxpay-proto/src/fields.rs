//! [`Fields`]: the flat name -> value map that every v2 message is on the wire.
//!
//! Kept sorted by name in ASCII byte order, which is exactly the order the signature's canonical
//! string needs, and holding *every* received field (unknown ones too) so that verification
//! covers what was actually sent.

use std::collections::BTreeMap;

use crate::types::FieldError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(BTreeMap<String, String>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field (replacing any earlier value).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// Sets a field only when the value is `Some` and not empty (empty values are never signed).
    pub fn set_opt(&mut self, name: &str, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(v) = value {
            let v = v.into();
            if !v.is_empty() {
                self.0.insert(name.to_owned(), v);
            }
        }
        self
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A present, non-empty value.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// A required, non-empty value, or a [`FieldError`] naming the field.
    pub fn require(&self, name: &str) -> Result<&str, FieldError> {
        self.non_empty(name).ok_or_else(|| FieldError::missing(name))
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Fields in ASCII order of their names.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Inserts a field that must not already be present (parsers use this to reject duplicates).
    pub(crate) fn insert_new(&mut self, name: String, value: String) -> Result<(), String> {
        use std::collections::btree_map::Entry;
        match self.0.entry(name) {
            Entry::Occupied(e) => Err(e.key().clone()),
            Entry::Vacant(e) => {
                e.insert(value);
                Ok(())
            }
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Fields(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}
