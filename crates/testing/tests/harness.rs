//! What `cargo test` prints for a test whose need is missing, outside CI and under it, and for a
//! test that uses something it did not declare. Each check runs this binary again as a child
//! (`CHILD` set: only the probe tests are listed) with curl hidden by `STRATUS_TEST_HIDE`, so
//! the checks hold on a machine with curl and on one without.

use std::process::{Command, Output};

use stratus_testing::{Need, Test};

const CHILD: &str = "STRATUS_HARNESS_TEST_CHILD";

/// Runs one probe test in a child with curl hidden; `ci` sets CI=true.
fn child(probe: &str, ci: bool) -> (Output, String) {
    let mut command = Command::new(std::env::current_exe().expect("this test's binary"));
    command
        .args([probe, "--exact", "--test-threads=1"])
        .env(CHILD, "1")
        .env("STRATUS_TEST_HIDE", "curl")
        .env_remove("CI");
    if ci {
        command.env("CI", "true");
    }
    let output = command.output().expect("running the probe");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn a_missing_need_is_printed_ignored_with_its_reason_and_counted() {
    let (output, stdout) = child("probe::declares_curl", false);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout
            .contains("test probe::declares_curl ... ignored (needs curl: apt-get install curl)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: ok. 0 passed; 0 failed; 1 ignored;"),
        "{stdout}"
    );
}

fn under_ci_a_missing_need_is_a_failure() {
    let (output, stdout) = child("probe::declares_curl", true);
    assert_eq!(output.status.code(), Some(101), "{stdout}");
    assert!(
        stdout.contains("test probe::declares_curl ... FAILED\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("needs curl: apt-get install curl (CI is set"),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: FAILED. 0 passed; 1 failed; 0 ignored;"),
        "{stdout}"
    );
}

fn a_need_that_was_not_declared_fails_instead_of_passing() {
    let (output, stdout) = child("probe::uses_curl_undeclared", false);
    assert_eq!(output.status.code(), Some(101), "{stdout}");
    assert!(
        stdout.contains("test probe::uses_curl_undeclared ... FAILED\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("curl is missing (hidden by STRATUS_TEST_HIDE); apt-get install curl"),
        "{stdout}"
    );
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return stratus_testing::run(vec![
            Test::sync("probe::declares_curl", || {
                Need::Curl.path();
            })
            .needs(&[Need::Curl]),
            Test::sync("probe::uses_curl_undeclared", || {
                Need::Curl.path();
            }),
        ]);
    }
    stratus_testing::run(vec![
        Test::sync(
            "a_missing_need_is_printed_ignored_with_its_reason_and_counted",
            a_missing_need_is_printed_ignored_with_its_reason_and_counted,
        ),
        Test::sync(
            "under_ci_a_missing_need_is_a_failure",
            under_ci_a_missing_need_is_a_failure,
        ),
        Test::sync(
            "a_need_that_was_not_declared_fails_instead_of_passing",
            a_need_that_was_not_declared_fails_instead_of_passing,
        ),
    ])
}
