//! One module per command family.

mod change_user;
mod kill;
pub(super) mod prepared;
mod query;
mod reset;
