//! The end-to-end suite again, every server on PostgreSQL: a throwaway cluster started by this
//! test process (`lobby_tests::pg`, chosen by this binary's name), one database per test's data
//! directory. The same test files as `tests/e2e/` but the face pipeline's own (`pipeline`,
//! `fastops`: no store); where a test inspects the SQLite file itself it checks PostgreSQL's
//! equivalent. Several nodes on one database: [`nodes`].

mod nodes;

#[path = "../e2e/ladder.rs"]
mod ladder;
#[path = "../e2e/records.rs"]
mod records;
#[path = "../e2e/security.rs"]
mod security;
#[path = "../e2e/service.rs"]
mod service;
