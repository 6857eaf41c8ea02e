//! The harness: a test file lists its tests with what each needs, and `run` hands them to
//! libtest-mimic, which prints and filters them as `cargo test` users expect.
//!
//! Why not libtest: a `#[test]` can only pass, fail or be ignored at compile time. A test whose
//! server is missing could only return early and be printed `ok`, a green suite that ran nothing
//! real. Here such a test is ignored at run time with its reason in the line and the count in the
//! summary:
//!
//! ```text
//! test three_registries_share_one_view ... ignored (needs etcd: apt-get install etcd-server)
//! test result: ok. 2 passed; 0 failed; 4 ignored; 0 measured; 0 filtered out
//! ```
//!
//! Under CI (see [`crate::under_ci`]) nothing may be missing: the same test fails with the same
//! reason.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::needs::Need;

type AsyncTest = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

enum Body {
    Sync(Box<dyn FnOnce() + Send>),
    /// Run on a runtime of its own, as `#[tokio::test]` does: current-thread, or multi-thread
    /// with `workers` worker threads.
    Async {
        test: AsyncTest,
        workers: Option<usize>,
    },
}

/// One test: a name, what it needs, and its body.
pub struct Test {
    name: String,
    needs: Vec<Need>,
    body: Body,
}

impl Test {
    /// An async test, run on a current-thread runtime of its own (`#[tokio::test]`).
    pub fn new<F, Fut>(name: impl Into<String>, test: F) -> Test
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Test {
            name: name.into(),
            needs: Vec::new(),
            body: Body::Async {
                test: Box::new(move || Box::pin(test())),
                workers: None,
            },
        }
    }

    /// A plain test (`#[test]`).
    pub fn sync(name: impl Into<String>, test: impl FnOnce() + Send + 'static) -> Test {
        Test {
            name: name.into(),
            needs: Vec::new(),
            body: Body::Sync(Box::new(test)),
        }
    }

    /// Runs the async test on a multi-thread runtime with `workers` worker threads
    /// (`#[tokio::test(flavor = "multi_thread", worker_threads = workers)]`).
    pub fn worker_threads(mut self, workers: usize) -> Test {
        match &mut self.body {
            Body::Async { workers: w, .. } => *w = Some(workers),
            Body::Sync(_) => panic!("{}: worker_threads is for async tests", self.name),
        }
        self
    }

    /// What the test needs beyond the Rust toolchain: when any is missing, the test is reported
    /// ignored with the reason (a failure under CI) and its body does not run.
    pub fn needs(mut self, needs: &[Need]) -> Test {
        self.needs.extend_from_slice(needs);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs the tests as the command line says (libtest's options: a filter, `--exact`,
/// `--test-threads`, `--list`...) and prints libtest's report. `main` returns what it returns.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let mut args = Arguments::from_args();
    // libtest reads RUST_TEST_THREADS too; libtest-mimic only the flag.
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|threads| threads.parse().ok());
    }
    libtest_mimic::run(&args, trials(tests, crate::under_ci())).exit_code()
}

/// Whether each need is met, asked at most once per run (some needs run a program to find out).
#[derive(Clone, Default)]
struct Met(Arc<Mutex<HashMap<Need, bool>>>);

impl Met {
    fn check(&self, need: Need) -> bool {
        let mut known = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *known.entry(need).or_insert_with(|| need.is_met())
    }
}

fn trials(tests: Vec<Test>, ci: bool) -> Vec<Trial> {
    let mut names = HashSet::new();
    for test in &tests {
        assert!(
            names.insert(test.name.clone()),
            "two tests are named {}",
            test.name
        );
    }
    let met = Met::default();
    tests
        .into_iter()
        .map(|test| {
            let met = met.clone();
            let name = test.name.clone();
            // Needs are checked when the test's turn comes, so a filtered run asks only about
            // the needs of the tests it runs.
            Trial::ignorable_test(name, move || outcome(test, ci, |need| met.check(need)))
        })
        .collect()
}

/// The rule: a missing need ignores the test with the reason outside CI and fails it under CI;
/// otherwise the body runs.
fn outcome(test: Test, ci: bool, mut met: impl FnMut(Need) -> bool) -> Result<Completion, Failed> {
    let missing: Vec<String> = test
        .needs
        .iter()
        .filter(|need| !met(**need))
        .map(Need::reason)
        .collect();
    if missing.is_empty() {
        return run_body(&test.name, test.body).map(|()| Completion::Completed);
    }
    let reasons = missing.join("; ");
    if ci {
        Err(format!("{reasons} (CI is set: nothing a test needs may be missing)").into())
    } else {
        Ok(Completion::ignored_with(reasons))
    }
}

/// Runs the body in a thread named after the test, so a panic says which test it came from.
fn run_body(name: &str, body: Body) -> Result<(), Failed> {
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || match body {
            Body::Sync(test) => test(),
            Body::Async { test, workers } => {
                let mut builder = match workers {
                    None => tokio::runtime::Builder::new_current_thread(),
                    Some(workers) => {
                        let mut builder = tokio::runtime::Builder::new_multi_thread();
                        builder.worker_threads(workers);
                        builder
                    }
                };
                let runtime = builder
                    .enable_all()
                    .build()
                    .unwrap_or_else(|error| panic!("building the test's runtime: {error}"));
                runtime.block_on(test());
            }
        })
        .map_err(|error| Failed::from(format!("starting the test's thread: {error}")))?;
    thread.join().map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(not a string)");
        Failed::from(format!("test panicked: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A test that records whether its body ran.
    fn recorded(needs: &[Need]) -> (Test, Arc<AtomicBool>) {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let test = Test::new("recorded", move || async move {
            flag.store(true, Ordering::SeqCst);
        })
        .needs(needs);
        (test, ran)
    }

    fn none_met(_: Need) -> bool {
        false
    }

    #[test]
    fn a_missing_need_ignores_the_test_with_its_reason_and_runs_nothing() {
        let (test, ran) = recorded(&[Need::Etcd, Need::Curl]);
        match outcome(test, false, none_met) {
            Ok(Completion::Ignored {
                reason: Some(reason),
            }) => assert_eq!(
                reason,
                "needs etcd: apt-get install etcd-server; needs curl: apt-get install curl"
            ),
            Ok(_) => panic!("not ignored"),
            Err(failed) => panic!("failed: {failed:?}"),
        }
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn under_ci_a_missing_need_is_a_failure_that_says_what_is_missing() {
        let (test, ran) = recorded(&[Need::Postgres]);
        let failed = match outcome(test, true, none_met) {
            Err(failed) => failed,
            Ok(_) => panic!("passed or ignored under CI"),
        };
        let message = failed.message().unwrap_or_default();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("CI"), "{message}");
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_test_whose_needs_are_met_runs_and_one_that_panics_fails() {
        let (test, ran) = recorded(&[Need::Redis]);
        assert!(matches!(
            outcome(test, true, |_| true),
            Ok(Completion::Completed)
        ));
        assert!(ran.load(Ordering::SeqCst));

        let panicking = Test::sync("panicking", || panic!("the server said no"));
        let failed = outcome(panicking, false, |_| true)
            .err()
            .expect("a failure");
        assert_eq!(
            failed.message(),
            Some("test panicked: the server said no"),
            "the panic's message is the failure's"
        );
    }

    #[test]
    fn async_tests_get_the_runtime_they_ask_for() {
        let current = Test::new("current", || async {
            let flavor = tokio::runtime::Handle::current().runtime_flavor();
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
        });
        let multi = Test::new("multi", || async {
            let handle = tokio::runtime::Handle::current();
            assert_eq!(
                handle.runtime_flavor(),
                tokio::runtime::RuntimeFlavor::MultiThread
            );
            assert_eq!(handle.metrics().num_workers(), 3);
        })
        .worker_threads(3);
        for test in [current, multi] {
            assert!(matches!(
                outcome(test, false, |_| true),
                Ok(Completion::Completed)
            ));
        }
    }

    #[test]
    fn the_body_runs_in_a_thread_named_after_the_test() {
        let test = Test::sync("named", || {
            assert_eq!(std::thread::current().name(), Some("named"));
        });
        assert!(outcome(test, false, |_| true).is_ok());
    }

    #[test]
    #[should_panic(expected = "two tests are named twice")]
    fn two_tests_with_one_name_are_refused() {
        trials(
            vec![Test::sync("twice", || ()), Test::sync("twice", || ())],
            false,
        );
    }

    #[test]
    fn each_need_is_checked_once_per_run() {
        let met = Met::default();
        let nowhere = Need::Python(&["a_module_no_machine_has"]);
        assert!(!met.check(nowhere), "asked: missing");
        // A recorded answer is the answer: python3 is not asked again.
        met.0.lock().unwrap().insert(nowhere, true);
        assert!(met.check(nowhere));
    }
}
