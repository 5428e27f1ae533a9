//! Who may do what: the role an admin credential carries.

use serde::{Deserialize, Serialize};

/// The role of a named admin token (`wxpay admin token add NAME --role ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything (the legacy `server.admin_token` is an owner).
    Owner,
    /// Day-to-day operations: orders, shipping, refunds; no catalogue or credential changes.
    Operator,
    /// Reads only.
    Viewer,
    /// A till (收银台) of Native mode 1: reads products and the state of their latest order under
    /// `/till/api`, nothing on the admin side.
    Till,
}

impl Role {
    /// Whether this role may use the admin API at all (`write`: a request that changes something).
    pub fn may_use_admin(self, write: bool) -> bool {
        match self {
            Role::Owner | Role::Operator => true,
            Role::Viewer => !write,
            Role::Till => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{name_of, parse_name};

    #[test]
    fn roles_by_name_and_what_they_may_do() {
        for role in [Role::Owner, Role::Operator, Role::Viewer, Role::Till] {
            assert_eq!(parse_name::<Role>("role", &name_of(&role)).unwrap(), role);
        }
        assert_eq!(name_of(&Role::Till), "till");
        assert!(parse_name::<Role>("role", "admin").is_err());
        assert!(Role::Owner.may_use_admin(true) && Role::Operator.may_use_admin(true));
        assert!(Role::Viewer.may_use_admin(false) && !Role::Viewer.may_use_admin(true));
        assert!(!Role::Till.may_use_admin(false));
    }
}
