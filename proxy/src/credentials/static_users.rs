//! The static source: users written in the configuration's `[[users]]` tables (local use and
//! tests). They change only when the configuration is reloaded.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Credential, Origin};
use crate::config::UserConfig;

/// The users of `[[users]]`, by name.
pub(super) fn from_config(users: &[UserConfig]) -> HashMap<String, Credential> {
    users
        .iter()
        .map(|u| {
            let cred = Credential {
                username: Arc::from(u.username.as_str()),
                password: u.password.clone(),
                auth_plugin: u.auth_plugin,
                previous: None,
                origin: Origin::Static,
            };
            (u.username.clone(), cred)
        })
        .collect()
}
