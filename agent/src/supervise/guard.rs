//! Turns a task's panic into its result, for spawned and local tasks alike.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use super::{Exit, Task, TaskOutput};

/// Runs `future` to its end, a panic included.
pub async fn guarded<F, T>(task: Task, future: F) -> Exit
where
    F: Future<Output = T>,
    T: TaskOutput,
{
    let result = match CatchUnwind(Box::pin(future)).await {
        Ok(output) => output.into_result(),
        Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
    };
    Exit { task, result }
}

struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future is never polled again after a panic, so no broken
        // invariant of its own can be observed.
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Logs every panic as one line — where, on which thread, and why —
/// instead of the default hook's report. With `RUST_BACKTRACE` set, that
/// report symbolizes a backtrace first: a second or more on a busy host,
/// spent before the supervisor even hears of the failure, out of the 2 s
/// in which a failed agent must be gone.
pub fn log_panics_in_one_line() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "panic: {}",
            panic_message(info.payload())
        );
    }));
}
