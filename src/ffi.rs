//! The one calling convention of `csrc/`: a C function that can fail takes `char** err` and,
//! on failure, sets it to a `strdup`ed message (a C++ exception's `what()`).
use std::ffi::{c_char, c_void, CStr};

/// Runs `f` with an error slot; `Err` with the message if the C side set it.
pub(crate) fn call<T>(f: impl FnOnce(*mut *mut c_char) -> T) -> Result<T, String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let out = f(&mut err);
    if err.is_null() {
        return Ok(out);
    }
    // SAFETY: the C side sets `err` to a NUL-terminated `strdup` result, ours to free.
    let msg = unsafe {
        let m = CStr::from_ptr(err).to_string_lossy().into_owned();
        libc::free(err as *mut c_void);
        m
    };
    Err(msg)
}
