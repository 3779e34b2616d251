//! The three roles of SPEC §7 (seed 004).

use std::fmt;
use std::str::FromStr;

use switchbord_api::v1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Manager,
    User,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Manager, Role::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Manager => "manager",
            Self::User => "user",
        }
    }

    pub fn from_proto(role: v1::Role) -> Option<Self> {
        match role {
            v1::Role::Admin => Some(Self::Admin),
            v1::Role::Manager => Some(Self::Manager),
            v1::Role::User => Some(Self::User),
            v1::Role::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> v1::Role {
        match self {
            Self::Admin => v1::Role::Admin,
            Self::Manager => v1::Role::Manager,
            Self::User => v1::Role::User,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Self::Admin),
            "manager" => Ok(Self::Manager),
            "user" => Ok(Self::User),
            other => Err(format!("`{other}` is not a role (admin, manager, user)")),
        }
    }
}
