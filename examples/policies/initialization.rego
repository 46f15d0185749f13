# A worker-side run initialization policy
# (SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY=/etc/liftoff/initialization.rego).
# A run is rejected when `deny` is non-empty; its messages go to the run's log
# and the `rejected` event. When `sample` is true, liftoff logs the input and
# the decision to its own stderr.
package spacelift

import rego.v1

# Applies (tracked runs) only from the main branch.
deny contains msg if {
	input.run.type == "TRACKED"
	input.run.commit.branch != "main"
	msg := sprintf("tracked runs only from main, not from %s", [input.run.commit.branch])
}

# No run of a stack named like production outside office hours is blocked
# here, but every production run is sampled for audit.
sample if startswith(input.static_run_environment.stack_slug, "prod")
