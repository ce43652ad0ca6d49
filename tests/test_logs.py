from serverless_sd.logs import prompt_fields


def test_prompts_are_reduced_to_their_lengths_unless_asked():
    inputs = {"prompt": "a secret idea", "negative": "blur", "width": 512}
    assert prompt_fields(inputs, log_prompts=False) == {"prompt_chars": 13, "negative_chars": 4}
    assert prompt_fields(inputs, log_prompts=True) == {"prompt": "a secret idea", "negative": "blur"}


def test_anything_but_an_object_logs_nothing():
    assert prompt_fields(["a secret idea"], log_prompts=True) == {}
