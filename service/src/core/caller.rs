//! Who is calling: the credential's holder, its role and the property it is scoped to (a kiosk's
//! always; staff and reservation systems optionally). Established by the auth layer; the core's
//! rules about scope live here.

use super::{AppError, Result};
use crate::config::Role;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub role: Role,
    pub property: Option<String>,
}

impl Caller {
    /// A credential scoped to a property may only touch that property.
    pub fn check_scope(&self, property: &str) -> Result<()> {
        match &self.property {
            Some(p) if p != property => Err(AppError::PermissionDenied(format!(
                "credential {} is not for property {property}",
                self.id
            ))),
            _ => Ok(()),
        }
    }

    /// The property a kiosk serves.
    pub fn kiosk_property(&self) -> Result<&str> {
        self.property
            .as_deref()
            .ok_or_else(|| AppError::PermissionDenied("this kiosk credential names no property".into()))
    }

    /// The property filter of a caller asking for a property's data: its own scope, and a filter it
    /// asks for only within that scope (`None`: every property, for an unscoped caller).
    pub fn property_filter(&self, asked: Option<&str>) -> Result<Option<String>> {
        match (&self.property, asked) {
            (Some(p), None) => Ok(Some(p.clone())),
            (Some(p), Some(a)) if p != a => Err(AppError::PermissionDenied(
                "this credential is for another property".into(),
            )),
            (_, a) => Ok(a.map(str::to_string)),
        }
    }
}
