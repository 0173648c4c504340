from qa_ray.tracking import failure_reason, redact_uri


def test_failure_reason_is_the_exceptions_own_first_line():
    hub = """Traceback (most recent call last):
  File "x.py", line 3, in <module>
    load()
ray.exceptions.RayTaskError(TrainingFailedError): ray::_run_trial() (pid=1)
  File "y.py", line 9, in load
OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them.
Check your internet connection or see how to run the library in offline mode at 'https://x'.
"""
    assert failure_reason(hub) == (
        "OSError: We couldn't connect to 'https://huggingface.co' to load the files, and "
        "couldn't find them."
    )
    sampled = (
        "ValueError: sampled configuration is invalid: `model.lora.r`: Input should be "
        "greater than 0, but got 0\n"
    )
    assert failure_reason(sampled) == sampled.strip()
    assert failure_reason("") == "unknown error"
    assert failure_reason("something odd\nlast words") == "last words"


def test_credentials_are_redacted_from_uris():
    assert redact_uri("http://alice:s3cret@mlflow:5000/x") == "http://alice:***@mlflow:5000/x"
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert "s3cret" not in redact_uri("https://bob:s3cret@host")
