//! Where user passwords come from. Today: the `[[users]]` tables of the configuration.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{AuthPluginName, Secret, UserConfig};

/// One database user as Sluice knows it.
#[derive(Debug, Clone)]
pub struct Credential {
    pub username: Arc<str>,
    pub password: Secret,
    pub auth_plugin: AuthPluginName,
}

/// The current set of users, replaceable at run time.
#[derive(Debug, Default)]
pub struct Credentials {
    users: RwLock<HashMap<String, Credential>>,
}

impl Credentials {
    /// Builds the set from configured users.
    pub fn from_config(users: &[UserConfig]) -> Self {
        let c = Credentials::default();
        c.replace(users);
        c
    }

    /// Replaces every user.
    pub fn replace(&self, users: &[UserConfig]) {
        let map = users
            .iter()
            .map(|u| {
                let cred = Credential {
                    username: Arc::from(u.username.as_str()),
                    password: u.password.clone(),
                    auth_plugin: u.auth_plugin,
                };
                (u.username.clone(), cred)
            })
            .collect();
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The user called `name`, if known.
    pub fn get(&self, name: &str) -> Option<Credential> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// True while no user is known (Secrets Manager not read yet, say): /readyz says not ready.
    pub fn is_empty(&self) -> bool {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The plugin to announce in the handshake: native unless every user uses caching_sha2,
    /// so most logins need no auth switch.
    pub fn greeting_plugin(&self) -> AuthPluginName {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        if !users.is_empty()
            && users
                .values()
                .all(|u| u.auth_plugin == AuthPluginName::CachingSha2Password)
        {
            AuthPluginName::CachingSha2Password
        } else {
            AuthPluginName::MysqlNativePassword
        }
    }
}
