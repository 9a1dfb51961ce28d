"""The project's development tooling (code and docs generators, test harnesses): not shipped in the wheel."""
