//! The run-log pipeline: mask, chunk, spool, upload.
//!
//! Call order: build a [`redact::Matcher`] from the run's secrets, choose a
//! [`sink::Sink`], then [`Pipeline::start`]; write any launcher lines
//! ([`Pipeline::line`], [`Pipeline::debug_command`]); [`Pipeline::pump`] the
//! job's merged stdout+stderr pipe (it returns when the pipe closes or a
//! timeout killed the job); [`Pipeline::finish`] once. At launcher start-up,
//! [`spool::recover`] uploads what an earlier process left in the spool.

pub mod redact;
