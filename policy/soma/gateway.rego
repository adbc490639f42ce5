# The gateway's verdict on one model call: data.soma.gateway.verdict.
#
# Input (built by the gateway; see somaagent.domain.policy): the request, the routed model
# and every candidate model the caller may use with its worst case, every budget that
# applies to the caller, an optional approval, and the policy version. Money is integer
# nano-USD, GPU time integer microseconds, tokens integers, so every comparison is exact.
#
# Output: {"action", "reasons", "model_id", "retry_after"}; action is one of allow,
# downgrade, pause, require_approval, deny.
#
# Semantics (policy/constitution.md states the principles behind them):
#   1. A candidate FITS when, for every budget and every dimension whose limit is not null,
#      its worst case <= the budget's remaining amount. A null limit is no limit.
#   2. The routed (chosen) model fits and no approval threshold is crossed -> allow.
#   3. A budget's approval_above_usd_nano is crossed when the chosen model's worst-case USD
#      is above it. Unless the input carries an approval with status "approved" for this
#      prompt_hash and this model -> require_approval, even when the model fits.
#   4. The chosen model does not fit: the budgets it exceeds decide.
#      - All of them say "downgrade" and another candidate fits -> downgrade to the fitting
#        candidate with the smallest worst-case USD (ties: fewest tokens, then model_id).
#        A candidate that would itself cross an approval threshold without an approval for
#        it is not a downgrade target.
#      - Otherwise the most severe on_exceed among them, deny > require_approval > pause >
#        downgrade, where a downgrade that cannot be satisfied becomes pause. A pause
#        carries retry_after = the earliest resets_at among the exceeded budgets.
#      An approval never overrides an exhausted budget: approvals answer rule 3 only.
#   5. The verdict is total. An input that does not follow the contract is denied with
#      reasons naming what is wrong, and the last branch of `verdict` is unconditional and
#      fails closed. This engine treats a built-in's type error as an evaluation error
#      (no verdict at all), so the decision rules only run on validated input and the
#      validation guards every built-in call by a type test.
package soma.gateway

dims := ["tokens", "usd_nano", "gpu_us"]

on_exceed_actions := {"downgrade", "pause", "require_approval", "deny"}

# Rule 4's order: the larger number wins.
severity := {"downgrade": 1, "pause": 2, "require_approval": 3, "deny": 4}

# resets_at is RFC 3339 UTC to the second, so that string order is time order and no
# time parsing (which fails on a well-shaped but impossible date) is needed.
reset_pattern := `^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$`

# ---------------------------------------------------------------------------------------
# The decision (rule 5: an else chain whose last branch has no condition).

verdict := v if {
	not input_valid
	v := {
		"action": "deny",
		"reasons": array.concat(["input does not follow the policy contract"], sort(input_errors)),
		"model_id": safe_model_id,
		"retry_after": null,
	}
} else := v if {
	chosen_fits
	v := fit_verdict
} else := v if {
	not chosen_fits
	v := exceeded_verdict
} else := {
	"action": "deny",
	"reasons": ["policy error: no rule decided this input (fail closed)"],
	"model_id": safe_model_id,
	"retry_after": null,
}

safe_model_id := m if {
	m := input.route.model_id
	is_string(m)
} else := ""

# ---------------------------------------------------------------------------------------
# Rule 1: fitting.

# Every limited dimension of every budget: [budget index, dimension, remaining].
caps := [[i, d, b.remaining[d]] |
	some i, b in input.budgets
	some d in dims
	b.limit[d] != null
]

fits(c) if {
	every cap in caps {
		c.worst_case[cap[1]] <= cap[2]
	}
}

# The routed model's candidate entry (validation makes it exist exactly once).
chosen := [c | some c in input.route.candidates; c.model_id == input.route.model_id][0]

chosen_fits if fits(chosen)

budget_label(b) := sprintf("tenant %s %s", [b.window, b.window_key]) if b.scope == "tenant"

budget_label(b) := sprintf("persona %s %s %s", [b.persona, b.window, b.window_key]) if {
	b.scope == "persona"
}

# ---------------------------------------------------------------------------------------
# Rules 2 and 3: the chosen model fits.

approval := object.get(input, "approval", null)

# The lowest approval threshold of any budget (undefined when no budget has one).
approval_threshold := min(thresholds) if {
	thresholds := {t | some b in input.budgets; t := b.approval_above_usd_nano; t != null}
	count(thresholds) > 0
}

crosses_threshold(c) if c.worst_case.usd_nano > approval_threshold

threshold_reasons(c) := [msg |
	some b in input.budgets
	b.approval_above_usd_nano != null
	c.worst_case.usd_nano > b.approval_above_usd_nano
	msg := sprintf("budget %s (%s): worst case %v nano-USD > approval threshold %v", [
		b.budget_id, budget_label(b), c.worst_case.usd_nano, b.approval_above_usd_nano,
	])
]

approved_for(model_id) if {
	approval != null
	approval.status == "approved"
	approval.prompt_hash == input.request.prompt_hash
	approval.model_id == model_id
}

needs_approval(c) if {
	crosses_threshold(c)
	not approved_for(c.model_id)
}

within_reason := "no budget applies" if {
	count(input.budgets) == 0
} else := sprintf("within every budget: %s", [concat(", ", [b.budget_id | some b in input.budgets])])

# Why the presented approval (if any) does not cover the chosen model.
missing_approval_reason := "no approval presented" if {
	approval == null
} else := sprintf("approval %s is %s, not approved", [approval.id, approval.status]) if {
	approval.status != "approved"
} else := sprintf("approval %s is for another prompt", [approval.id]) if {
	approval.prompt_hash != input.request.prompt_hash
} else := sprintf("approval %s is for model %s, not %s", [approval.id, approval.model_id, chosen.model_id])

fit_verdict := v if {
	needs_approval(chosen)
	v := {
		"action": "require_approval",
		"reasons": array.concat(threshold_reasons(chosen), [missing_approval_reason]),
		"model_id": chosen.model_id,
		"retry_after": null,
	}
} else := v if {
	crosses_threshold(chosen)
	v := {
		"action": "allow",
		"reasons": [within_reason, sprintf("approval %s covers %s for this prompt", [approval.id, chosen.model_id])],
		"model_id": chosen.model_id,
		"retry_after": null,
	}
} else := {
	"action": "allow",
	"reasons": [within_reason],
	"model_id": chosen.model_id,
	"retry_after": null,
}

# ---------------------------------------------------------------------------------------
# Reuse (data.soma.gateway.decision): when the gateway may apply this verdict to a later
# input without evaluating again. Only a plain allow (rule 2 without rule 3) is reusable:
# it reads no prompt hash and no approval, and it stays the same for any input (built by
# the gateway, so valid by construction) where
#   - the value at every path in `equal` is the same as in this input,
#   - the array at every path in `lengths` has the same length,
#   - for every [a, b] in `at_most`: the integer at path a <= the integer at path b,
# for at most `ttl_s` seconds. Paths are arrays of object keys and array indexes. The
# gateway checks these conditions on the new input; tests check them against evaluating.

decision := {"verdict": verdict, "reuse": reuse}

reuse_ttl_s := 60

reuse := r if {
	input_valid
	chosen_fits
	not crosses_threshold(chosen)
	some k, c in input.route.candidates
	c.model_id == input.route.model_id
	wc := ["route", "candidates", k, "worst_case"]
	r := {
		"ttl_s": reuse_ttl_s,
		"equal": array.concat(
			[["route", "model_id"], ["route", "candidates", k, "model_id"]],
			[p |
				some i, _ in input.budgets
				some f in ["budget_id", "approval_above_usd_nano", "limit"]
				p := ["budgets", i, f]
			],
		),
		"lengths": [["budgets"]],
		"at_most": array.concat(
			[[array.concat(wc, [d]), ["budgets", i, "remaining", d]] | some [i, d, _] in caps],
			[[array.concat(wc, ["usd_nano"]), ["budgets", i, "approval_above_usd_nano"]] |
				some i, b in input.budgets
				b.approval_above_usd_nano != null
			],
		),
	}
} else := null

# ---------------------------------------------------------------------------------------
# Rule 4: the chosen model does not fit.

# [budget index, dimension] where the chosen model's worst case is over what remains.
overruns := [[i, d] |
	some [i, d, remaining] in caps
	chosen.worst_case[d] > remaining
]

exceeded := [input.budgets[i] | some i in {i | some [i, _] in overruns}]

exceeded_actions := {b.on_exceed | some b in exceeded}

overrun_reasons := [sprintf("budget %s (%s): %s worst case %v > remaining %v", [
	b.budget_id, budget_label(b), d, chosen.worst_case[d], b.remaining[d],
]) |
	some [i, d] in overruns
	b := input.budgets[i]
]

# Downgrade targets as [usd_nano, tokens, model_id]: min() picks rule 4's order.
downgrade_options := [[c.worst_case.usd_nano, c.worst_case.tokens, c.model_id] |
	some c in input.route.candidates
	c.model_id != chosen.model_id
	fits(c)
	not needs_approval(c)
]

most_severe := a if {
	top := max({severity[x] | some x in exceeded_actions})
	some a in exceeded_actions
	severity[a] == top
}

# A downgrade that cannot be satisfied becomes a pause.
final_action := "pause" if {
	most_severe == "downgrade"
} else := most_severe

earliest_reset := min(resets) if {
	resets := [b.resets_at | some b in exceeded; b.resets_at != null]
	count(resets) > 0
} else := null

retry_after := earliest_reset if {
	final_action == "pause"
} else := null

deciding_ids := concat(", ", [b.budget_id | some b in exceeded; b.on_exceed == most_severe])

action_reason := r if {
	most_severe == "downgrade"
	r := "pause: no other candidate fits every budget, so the downgrade cannot be made"
} else := r if {
	final_action == "pause"
	r := sprintf("pause: on_exceed of budget %s", [deciding_ids])
} else := r if {
	final_action == "require_approval"
	r := sprintf("require_approval: on_exceed of budget %s (raise the limit or wait for the reset)", [deciding_ids])
} else := sprintf("deny: on_exceed of budget %s", [deciding_ids])

retry_reasons := [sprintf("retry after %s, the earliest reset of the exceeded budgets", [retry_after])] if {
	retry_after != null
} else := []

approval_held_reasons := [sprintf("approval %s does not override an exhausted budget", [approval.id])] if {
	approved_for(chosen.model_id)
} else := []

exceeded_verdict := v if {
	exceeded_actions == {"downgrade"}
	count(downgrade_options) > 0
	target := min(downgrade_options)
	v := {
		"action": "downgrade",
		"reasons": array.concat(overrun_reasons, [sprintf(
			"downgrade from %s to %s, the cheapest candidate that fits every budget (worst case %v nano-USD, %v tokens)",
			[chosen.model_id, target[2], target[0], target[1]],
		)]),
		"model_id": target[2],
		"retry_after": null,
	}
} else := {
	"action": final_action,
	"reasons": array.concat(
		array.concat(overrun_reasons, [action_reason]),
		array.concat(retry_reasons, approval_held_reasons),
	),
	"model_id": chosen.model_id,
	"retry_after": retry_after,
}

# ---------------------------------------------------------------------------------------
# Rule 5: the input contract.
#
# `input_valid` is the check on the hot path: flat, no messages (every rule, function or
# built-in call costs the interpreter microseconds). Only an input that fails it pays for
# `input_errors`, which says what is wrong; the tests check that the two agree.

# Every element of array t is an integer >= 0 (nats) or that or null (nats_or_null):
# checked on t's JSON text, two built-in calls for a whole array, none of which can fail
# whatever the element types (a number like 1.0 or 1e3 is not an integer here).
nats(t) if regex.match(`^\[[0-9]+(,[0-9]+)*\]$`, json.marshal(t))

nats_or_null(t) if regex.match(`^\[(null|[0-9]+)(,(null|[0-9]+))*\]$`, json.marshal(t))

nonempty_string(x) if {
	is_string(x)
	x != ""
}

input_valid if {
	nonempty_string(input.request.prompt_hash)
	nonempty_string(input.route.model_id)
	is_array(input.route.candidates)
	every c in input.route.candidates {
		candidate_ok(c)
	}
	count({c.model_id | some c in input.route.candidates}) == count(input.route.candidates)
	input.route.model_id in {c.model_id | some c in input.route.candidates}
	is_array(input.budgets)
	every b in input.budgets {
		budget_ok(b)
	}
	approval_ok
}

candidate_ok(c) if {
	is_string(c.model_id)
	c.model_id != ""
	nats([c.worst_case.tokens, c.worst_case.usd_nano, c.worst_case.gpu_us])
}

budget_ok(b) if {
	is_string(b.budget_id)
	b.budget_id != ""
	valid_scope(b)
	is_string(b.window)
	is_string(b.window_key)
	valid_reset(b)
	b.on_exceed in on_exceed_actions
	amounts_ok(b)
	dim_ok(b.limit.tokens, b.spent.tokens, b.reserved.tokens, b.remaining.tokens)
	dim_ok(b.limit.usd_nano, b.spent.usd_nano, b.reserved.usd_nano, b.remaining.usd_nano)
	dim_ok(b.limit.gpu_us, b.spent.gpu_us, b.reserved.gpu_us, b.remaining.gpu_us)
}

valid_scope(b) if b.scope == "tenant"

valid_scope(b) if {
	b.scope == "persona"
	nonempty_string(b.persona)
}

valid_reset(b) if b.resets_at == null

valid_reset(b) if {
	is_string(b.resets_at)
	regex.match(reset_pattern, b.resets_at)
}

# Every amount of budget b is present and null or an integer >= 0.
amounts_ok(b) if {
	l := b.limit
	s := b.spent
	r := b.reserved
	rem := b.remaining
	nats_or_null([
		b.approval_above_usd_nano,
		l.tokens, l.usd_nano, l.gpu_us,
		s.tokens, s.usd_nano, s.gpu_us,
		r.tokens, r.usd_nano, r.gpu_us,
		rem.tokens, rem.usd_nano, rem.gpu_us,
	])
}

# One dimension of a budget whose amounts are null or integers >= 0 (amounts_ok).
# Unlimited: nothing remains to count down (spent and reserved may be null; not read).
dim_ok(limit, _, _, remaining) if {
	limit == null
	remaining == null
}

# Limited: remaining = max(0, limit - spent - reserved).
dim_ok(limit, spent, reserved, remaining) if {
	limit != null
	spent != null
	reserved != null
	remaining == max({0, (limit - spent) - reserved})
}

approval_ok if object.get(input, "approval", null) == null

approval_ok if {
	is_string(input.approval.id)
	is_string(input.approval.status)
	is_string(input.approval.prompt_hash)
	is_string(input.approval.model_id)
}

# --- Diagnostics: why `input_valid` failed, one message per problem. ---
# `not` is applied only to rules and to functions of bound variables: OPA evaluates a ref
# passed as an argument (`not f(input.a.b)`) outside the negation, so an undefined
# input.a.b would make such a check undefined instead of reporting it.

is_object_input if is_object(input)

prompt_hash_ok if nonempty_string(input.request.prompt_hash)

route_model_ok if nonempty_string(input.route.model_id)

candidates_are_array if is_array(input.route.candidates)

budgets_are_array if is_array(input.budgets)

chosen_listed if input.route.model_id in {c.model_id | some c in input.route.candidates}

input_errors contains "input is not an object" if not is_object_input

input_errors contains "request.prompt_hash is not a non-empty string" if not prompt_hash_ok

input_errors contains "route.model_id is not a non-empty string" if not route_model_ok

input_errors contains "route.model_id is not among route.candidates" if {
	route_model_ok
	not chosen_listed
}

input_errors contains "route.candidates is not an array" if not candidates_are_array

input_errors contains "budgets is not an array" if not budgets_are_array

input_errors contains "approval is not null or an object with string id, status, prompt_hash, model_id" if {
	is_object_input
	not approval_ok
}

input_errors contains sprintf("route.candidates[%v]: %s", [i, problem]) if {
	some i, c in input.route.candidates
	some problem in candidate_problems(c)
}

input_errors contains sprintf("route.candidates[%v]: names the same model as route.candidates[%v]", [j, i]) if {
	some i, c in input.route.candidates
	some j, e in input.route.candidates
	i < j
	candidate_ok(c)
	candidate_ok(e)
	c.model_id == e.model_id
}

candidate_problems(c) := {"not an object"} if {
	not is_object(c)
} else := {p | some [check, p] in candidate_checks; not candidate_passes(c, check)}

candidate_checks := [
	["model_id", "model_id is not a non-empty string"],
	["worst_case", "worst_case.tokens, usd_nano and gpu_us are not all integers >= 0"],
]

candidate_passes(c, "model_id") if nonempty_string(c.model_id)

candidate_passes(c, "worst_case") if nats([c.worst_case.tokens, c.worst_case.usd_nano, c.worst_case.gpu_us])

input_errors contains sprintf("budgets[%v]: %s", [i, problem]) if {
	some i, b in input.budgets
	some problem in budget_problems(b)
}

budget_problems(b) := {"not an object"} if {
	not is_object(b)
} else := {p | some [check, p] in budget_checks; not budget_passes(b, check)}

budget_checks := [
	["budget_id", "budget_id is not a non-empty string"],
	["scope", "scope is not tenant, or persona with a non-empty persona"],
	["window", "window or window_key is not a string"],
	["resets_at", "resets_at is not null or YYYY-MM-DDTHH:MM:SSZ"],
	["on_exceed", "on_exceed is not one of downgrade, pause, require_approval, deny"],
	["approval_above_usd_nano", "approval_above_usd_nano is not null or an integer >= 0"],
	["tokens", "tokens: want limit and remaining null, or integers >= 0 with remaining = max(0, limit - spent - reserved)"],
	["usd_nano", "usd_nano: want limit and remaining null, or integers >= 0 with remaining = max(0, limit - spent - reserved)"],
	["gpu_us", "gpu_us: want limit and remaining null, or integers >= 0 with remaining = max(0, limit - spent - reserved)"],
]

budget_passes(b, "budget_id") if nonempty_string(b.budget_id)

budget_passes(b, "scope") if valid_scope(b)

budget_passes(b, "window") if {
	is_string(b.window)
	is_string(b.window_key)
}

budget_passes(b, "resets_at") if valid_reset(b)

budget_passes(b, "on_exceed") if b.on_exceed in on_exceed_actions

budget_passes(b, "approval_above_usd_nano") if nats_or_null([b.approval_above_usd_nano])

budget_passes(b, d) if {
	d in dims
	nats_or_null([b.limit[d], b.spent[d], b.reserved[d], b.remaining[d]])
	dim_ok(b.limit[d], b.spent[d], b.reserved[d], b.remaining[d])
}
