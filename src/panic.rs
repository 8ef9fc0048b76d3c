//! The panic boundary every exported function runs inside.
//!
//! A Rust panic must never unwind into C. [`boundary`] runs the body of an exported function,
//! turns a returned [`Error`] into its status code plus this thread's last error, and a caught
//! panic into `TB_ERR_PANIC`. In a child forked after a runtime started, it refuses every call
//! with `TB_ERR_FORKED`. What a function returns on failure depends on its return type
//! ([`FfiReturn`]), as in rustls-ffi: the status itself, `false`, `0` or nothing.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::context;
use crate::error::{record, tb_status, Error, TB_ERR_FORKED, TB_ERR_PANIC};

/// What an exported function returns when its body fails.
pub(crate) trait FfiReturn {
    fn from_failure(status: tb_status) -> Self;
}

impl FfiReturn for tb_status {
    fn from_failure(status: tb_status) -> Self {
        status
    }
}

impl FfiReturn for bool {
    fn from_failure(_: tb_status) -> Self {
        false
    }
}

impl FfiReturn for usize {
    fn from_failure(_: tb_status) -> Self {
        0
    }
}

impl FfiReturn for () {
    fn from_failure(_: tb_status) -> Self {}
}

/// Runs the body of the exported function `function`, catching panics and recording failures.
pub(crate) fn boundary<R: FfiReturn>(
    function: &'static str,
    body: impl FnOnce() -> Result<R, Error>,
) -> R {
    if context::forked() {
        let error = Error::new(
            TB_ERR_FORKED,
            "this process was forked after a runtime started: the library's threads do not \
             exist here (use it in the parent, or exec a new program)",
        );
        return R::from_failure(record(function, error));
    }
    let error = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(error)) => error,
        Err(payload) => panic_error(payload.as_ref()),
    };
    R::from_failure(record(function, error))
}

/// Like [`boundary`] for a body that cannot fail except by panicking: `fallback` is returned then.
pub(crate) fn boundary_value<R>(
    function: &'static str,
    fallback: R,
    body: impl FnOnce() -> R,
) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            record(function, panic_error(payload.as_ref()));
            fallback
        }
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_string())
}

/// Describes a caught panic payload.
pub(crate) fn panic_error(payload: &(dyn Any + Send)) -> Error {
    Error::text(
        TB_ERR_PANIC,
        format!("internal panic caught: {}", panic_message(payload)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{tb_last_error, TB_ERR_NULL};

    fn last_error() -> String {
        let mut buf = vec![0u8; 256];
        let n = tb_last_error(buf.as_mut_ptr().cast(), buf.len());
        buf.truncate(n);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status: tb_status = boundary("tb_example", || panic!("boom"));
        assert_eq!(status, TB_ERR_PANIC);
        assert!(last_error().starts_with("tb_example: internal panic caught: boom"));
        let flag: bool = boundary("tb_example", || -> Result<bool, Error> { panic!("again") });
        assert!(!flag);
        assert_eq!(boundary_value("tb_example", 7usize, || panic!("x")), 7);
    }

    #[test]
    fn an_error_becomes_its_status_and_the_last_error() {
        let status: tb_status = boundary("tb_example", || Err(Error::null("ptr")));
        assert_eq!(status, TB_ERR_NULL);
        assert_eq!(
            last_error(),
            "tb_example: argument `ptr` is NULL (TB_ERR_NULL)"
        );
    }
}
