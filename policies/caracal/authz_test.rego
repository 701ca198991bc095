# Unit tests for caracal.authz: `opa test policies/ -v` (scripts/policy-test.sh adds the coverage gate).
# The same rules are also exercised through the compiled WASM by test/unit/policy-engine.test.ts
# with policies/fixtures/decisions.json.
package caracal.authz_test

import data.caracal.authz

active := {"id": "agent-1", "status": "active", "kind": "agent"}

suspended := {"id": "agent-2", "status": "suspended", "kind": "agent"}

read_echo := {
	"upstream": "echo",
	"method": "GET",
	"path": "/v1/things",
	"resource": "api:external/echo",
	"action": "read",
}

ext_read := {"id": "p-ext", "resources": ["api:external/*"], "actions": ["read"]}

req(resource, action) := object.union(read_echo, {"resource": resource, "action": action})

mk_input(principal, policies, request) := {
	"principal": principal,
	"policies": policies,
	"request": request,
	"now": 1767225600,
}

decide(inp) := d if {
	d := authz.decision with input as inp
}

# --- allow ---------------------------------------------------------------------------------------

test_allow_active_principal_matching_policy if {
	decide(mk_input(active, [ext_read], read_echo)) == {"allow": true, "reasons": [], "policy_ids": ["p-ext"]}
}

test_allow_defaults_to_false if {
	not authz.allow with input as {}
	authz.allow == false with input as {}
}

test_decision_is_always_defined if {
	d := authz.decision with input as {}
	d.allow == false
	count(d.reasons) > 0
	d.policy_ids == []
}

test_allow_reports_every_allowing_policy_sorted if {
	policies := [
		{"id": "p-z", "resources": ["api:external/*"], "actions": ["read"]},
		{"id": "p-a", "resources": ["api:external/echo"], "actions": ["*"]},
		{"id": "p-w", "resources": ["api:external/echo"], "actions": ["write"]},
	]
	decide(mk_input(active, policies, read_echo)).policy_ids == ["p-a", "p-z"]
}

test_allow_ignores_unknown_fields if {
	inp := object.union(mk_input(active, [ext_read], read_echo), {"mandate": {"jti": "m"}, "spend": 0})
	decide(inp).allow
}

# --- glob matching -------------------------------------------------------------------------------

test_glob_exact_match if authz.resource_matches("api:external/echo", "api:external/echo")

test_glob_exact_is_not_prefix if not authz.resource_matches("api:external/echo", "api:external/echo2")

test_glob_is_anchored if not authz.resource_matches("api:ext", "api:external/echo")

test_glob_star_one_segment if authz.resource_matches("api:external/*", "api:external/echo")

test_glob_star_does_not_cross_slash if not authz.resource_matches("api:external/*", "api:external/a/b")

test_glob_double_star_crosses_slash if authz.resource_matches("api:external/**", "api:external/a/b")

test_glob_star_within_segment if authz.resource_matches("api:external/echo*", "api:external/echo2")

test_glob_non_string_pattern_never_matches if not authz.resource_matches(42, "api:external/echo")

test_glob_invalid_pattern_never_matches if not authz.resource_matches("api:external/[", "api:external/echo")

# --- actions -------------------------------------------------------------------------------------

test_action_exact if authz.action_matches("read", "read")

test_action_wildcard if authz.action_matches("*", "delete")

test_action_mismatch if not authz.action_matches("read", "write")

test_action_case_sensitive if not authz.action_matches("Read", "read")

test_action_non_string if not authz.action_matches(["read"], "read")

test_wildcard_action_allows_any if {
	p := {"id": "p-any", "resources": ["api:external/echo"], "actions": ["*"]}
	decide(mk_input(active, [p], req("api:external/echo", "delete"))).allow
}

# --- reasons -------------------------------------------------------------------------------------

test_reason_principal_unknown_null if {
	decide(mk_input(null, [ext_read], read_echo)).reasons == ["principal_unknown"]
}

test_reason_principal_unknown_missing if {
	decide({"policies": [ext_read], "request": read_echo}).reasons == ["principal_unknown"]
}

test_reason_principal_suspended if {
	d := decide(mk_input(suspended, [ext_read], read_echo))
	d == {"allow": false, "reasons": ["principal_suspended"], "policy_ids": []}
}

test_reason_principal_inactive_other_status if {
	decide(mk_input({"id": "a", "status": "stopped"}, [ext_read], read_echo)).reasons == ["principal_inactive"]
}

test_reason_principal_inactive_no_status if {
	decide(mk_input({"id": "a"}, [ext_read], read_echo)).reasons == ["principal_inactive"]
}

test_reason_principal_not_object if {
	decide(mk_input("agent-1", [ext_read], read_echo)).reasons == ["input_invalid"]
}

test_reason_no_policy_empty if {
	decide(mk_input(active, [], read_echo)).reasons == ["no_policy"]
}

test_reason_no_policy_missing if {
	decide({"principal": active, "request": read_echo}).reasons == ["no_policy"]
}

test_reason_no_policy_only_malformed_entries if {
	policies := [
		{"id": "p-bad", "resources": "api:external/*", "actions": ["read"]},
		{"id": 7, "resources": ["api:external/*"], "actions": ["read"]},
		{"resources": ["api:external/*"], "actions": ["read"]},
		{"id": "p-noact", "resources": ["api:external/*"]},
		"p-ext",
	]
	decide(mk_input(active, policies, read_echo)).reasons == ["no_policy"]
}

test_reason_policies_not_array if {
	decide(mk_input(active, {"id": "p-ext"}, read_echo)).reasons == ["input_invalid", "no_policy"]
}

test_reason_scope_resource if {
	decide(mk_input(active, [ext_read], req("api:external/a/b", "read"))).reasons == ["scope_resource"]
}

test_reason_scope_action if {
	decide(mk_input(active, [ext_read], req("api:external/echo", "write"))).reasons == ["scope_action"]
}

test_scope_action_wins_over_scope_resource_when_some_policy_matches if {
	policies := [
		{"id": "p-billing", "resources": ["api:external/billing"], "actions": ["*"]},
		ext_read,
	]
	decide(mk_input(active, policies, req("api:external/echo", "write"))).reasons == ["scope_action"]
}

test_reason_input_invalid_request_missing if {
	decide({"principal": active, "policies": [ext_read]}).reasons == ["input_invalid"]
}

test_reason_input_invalid_action_number if {
	decide(mk_input(active, [ext_read], object.union(read_echo, {"action": 1}))).reasons == ["input_invalid"]
}

test_reason_input_invalid_resource_missing if {
	decide(mk_input(active, [ext_read], object.remove(read_echo, ["resource"]))).reasons == ["input_invalid"]
}

test_reason_input_invalid_empty_strings if {
	decide(mk_input(active, [ext_read], req("", "read"))).reasons == ["input_invalid"]
	decide(mk_input(active, [ext_read], req("api:external/echo", ""))).reasons == ["input_invalid"]
}

test_reasons_sorted_and_unique if {
	# principal_not_object and the bad request both yield input_invalid: reported once.
	d := decide({"principal": "x", "policies": "y", "request": {"action": 7}})
	d.reasons == ["input_invalid", "no_policy"]
}

test_all_reasons_at_once_sorted if {
	decide({}).reasons == ["input_invalid", "no_policy", "principal_unknown"]
	decide(mk_input(suspended, [], read_echo)).reasons == ["no_policy", "principal_suspended"]
}

test_deny_has_no_policy_ids if {
	decide(mk_input(suspended, [ext_read], read_echo)).policy_ids == []
}

# --- the shared decision fixtures, through the interpreter ---------------------------------------
# `opa test policies/` loads policies/fixtures/decisions.json as data.fixtures.

test_fixtures_loaded if count(data.fixtures) >= 20

test_fixtures if {
	failures := [f.name |
		some f in data.fixtures
		d := decide(f.input)
		not fixture_agrees(d, f.expected)
	]
	failures == []
}

fixture_agrees(d, expected) if {
	d.allow == expected.allow
	d.reasons == expected.reasons
	d.policy_ids == object.get(expected, "policy_ids", d.policy_ids)
}

# --- the string fast path of resource_matches means exactly what glob.match means --------------

glob_patterns := [
	"api:external/*", "api:external/**", "api:external/echo", "api:external/", "/*", "api:*/echo",
	"api:external/e*", "api:external/*/x", "api:external/a\\*", "api:external/{a,b}", "*", "**",
	"api:external/[a-z]*", "api:ext?rnal/echo", "mcp:github/**", "api:external/**/x",
]

glob_resources := [
	"api:external/echo", "api:external/echo2", "api:external/", "api:external", "api:external/a/b",
	"api:external/a", "api:external/b", "api:external/a*", "api:external/*", "mcp:github/repo/x",
	"api:externalx/echo", "/abc", "/a/b", "", "api:external/a/x", "api:external/e",
]

# Total, so a pair that only glob.match matches still shows up as a disagreement.
matches(p, r) := true if authz.resource_matches(p, r)

matches(p, r) := false if not authz.resource_matches(p, r)

test_fast_path_agrees_with_glob_match if {
	disagreements := [[p, r] |
		some p in glob_patterns
		some r in glob_resources
		fast := matches(p, r)
		slow := glob.match(p, ["/"], r)
		fast != slow
	]
	disagreements == []
}

test_fast_path_is_taken_for_common_forms if {
	authz.fast_form("api:external/echo")
	authz.fast_form("api:external/*")
	authz.fast_form("mcp:github/**")
	not authz.fast_form("api:*/echo")
	not authz.fast_form("api:external/a\\*")
}
