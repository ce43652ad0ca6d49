"""What the tests and bench/ share: the project's processes on free ports, tiny random-weight models, a fake
Hugging Face hub, fuzzing strategies and a fault-planted app. Imported as `testkit.<module>` by both."""
