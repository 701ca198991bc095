# Unit tests for caracal.authz: `opa test policies/ -v` (scripts/policy-test.sh adds the coverage gate).
# The same rules are also exercised through the compiled WASM by test/unit/policy-engine.test.ts
# with policies/fixtures/decisions.yaml.
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

no_emergency := {"global": false, "principal": false}

allowlisted := {"checked": true, "matched": true, "entry_id": "al-1"}

# The facts every well-formed input carries besides principal, policies and request.
with_facts(inp) := object.union({"emergency": no_emergency, "allowlist": allowlisted}, inp)

mk_input(principal, policies, request) := {
	"principal": principal,
	"policies": policies,
	"request": request,
	"mandate": null,
	"emergency": no_emergency,
	"allowlist": allowlisted,
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
	inp := object.union(mk_input(active, [ext_read], read_echo), {"budget": {"jti": "m"}, "spend": 0})
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
	decide(with_facts({"policies": [ext_read], "request": read_echo})).reasons == ["principal_unknown"]
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
	decide(with_facts({"principal": active, "request": read_echo})).reasons == ["no_policy"]
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
	decide(with_facts({"principal": active, "policies": [ext_read]})).reasons == ["input_invalid"]
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
	d := decide(with_facts({"principal": "x", "policies": "y", "request": {"action": 7}}))
	d.reasons == ["input_invalid", "no_policy"]
}

test_all_reasons_at_once_sorted if {
	decide({}).reasons == ["allowlist_no_match", "input_invalid", "no_policy", "principal_unknown"]
	decide(mk_input(suspended, [], read_echo)).reasons == ["no_policy", "principal_suspended"]
}

test_deny_has_no_policy_ids if {
	decide(mk_input(suspended, [ext_read], read_echo)).policy_ids == []
}

# --- the shared decision fixtures, through the interpreter ---------------------------------------
# `opa test policies/` loads policies/fixtures/decisions.yaml as data.fixtures.

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

# --- mandates ------------------------------------------------------------------------------------

ext_rw_delegable := {"id": "p-root", "resources": ["api:external/*"], "actions": ["read", "write"], "delegation_depth": 1}

mandate(over) := object.union(
	{
		"id": "m-1", "subject": "agent-1", "depth": 0,
		"resources": ["api:external/echo"], "actions": ["read"],
		"not_before": 1767225000, "expires_at": 1767229200, "revoked": false,
		"root_policy_id": "p-root", "chain": [],
	},
	over,
)

# An ancestor link as the gateway sends it: active, unrevoked, the URL on its allowlist.
link(over) := object.union(
	{"id": "m-1", "subject": "root-agent", "subject_status": "active", "revoked": false, "allowlist": allowlisted},
	over,
)

delegated := mandate({"id": "m-2", "depth": 1, "chain": [link({})]})

under(m) := object.union(mk_input(active, [ext_rw_delegable], read_echo), {"mandate": m})

test_mandate_root_allows_within_scope if {
	decide(under(mandate({}))) == {"allow": true, "reasons": [], "policy_ids": ["p-root"]}
}

test_mandate_delegated_allows_within_scope if decide(under(delegated)).allow

test_mandate_scope_is_the_intersection_with_the_policy if {
	# the policy grants write, the mandate only read
	decide(object.union(under(mandate({})), {"request": req("api:external/echo", "write")})).reasons == ["scope_action"]
	# the mandate names echo only
	decide(object.union(under(mandate({})), {"request": req("api:external/other", "read")})).reasons == ["scope_resource"]
}

test_mandate_only_its_root_policy_grants if {
	other := {"id": "p-other", "resources": ["api:external/*"], "actions": ["read"]}
	d := decide(object.union(under(mandate({"root_policy_id": "p-gone"})), {"policies": [other]}))
	d.reasons == ["no_policy"]
}

test_reason_mandate_subject_mismatch if decide(under(mandate({"subject": "agent-9"}))).reasons == ["mandate_subject_mismatch"]

test_reason_mandate_expired if decide(under(mandate({"expires_at": 1767225600}))).reasons == ["mandate_expired"]

test_reason_mandate_not_yet_valid if decide(under(mandate({"not_before": 1767225601}))).reasons == ["mandate_not_yet_valid"]

test_reason_mandate_revoked if decide(under(mandate({"revoked": true}))).reasons == ["mandate_revoked"]

test_reason_mandate_revoked_ancestor if {
	m := object.union(delegated, {"chain": [link({"revoked": true})]})
	decide(under(m)).reasons == ["mandate_revoked"]
}

test_reason_delegator_inactive if {
	m := object.union(delegated, {"chain": [link({"subject_status": "suspended"})]})
	decide(under(m)).reasons == ["delegator_inactive"]
}

test_reason_delegation_depth_is_checked_against_the_policy_now if {
	m := mandate({"depth": 2, "chain": [link({"id": "m-0", "subject": "a"}), link({"subject": "b"})]})
	decide(under(m)).reasons == ["delegation_depth"]
}

test_reason_malformed_mandate_is_input_invalid if {
	decide(under({"id": "m"})).reasons == ["input_invalid", "no_policy"]
	decide(under(mandate({"chain": [{"id": "m-0"}]}))).reasons == ["input_invalid"]
	decide(under(mandate({"revoked": "no"}))).reasons == ["input_invalid"]
}

# --- every ancestor's allowlist binds the delegate too -------------------------------------------

not_allowlisted := {"checked": true, "matched": false, "entry_id": null}

test_mandate_delegated_ancestor_allowlist_matched_allows if {
	d := decide(under(delegated))
	d == {"allow": true, "reasons": [], "policy_ids": ["p-root"]}
}

test_reason_allowlist_ancestor_denied if {
	m := object.union(delegated, {"chain": [link({"allowlist": not_allowlisted})]})
	decide(under(m)) == {"allow": false, "reasons": ["allowlist_ancestor_denied"], "policy_ids": []}
}

test_reason_allowlist_ancestor_denied_middle_of_the_chain if {
	deep := object.union(ext_rw_delegable, {"delegation_depth": 2})
	m := mandate({"id": "m-3", "depth": 2, "chain": [
		link({"id": "m-1", "subject": "a"}),
		link({"id": "m-2", "subject": "b", "allowlist": not_allowlisted}),
	]})
	decide(object.union(under(m), {"policies": [deep]})).reasons == ["allowlist_ancestor_denied"]
}

test_reason_allowlist_ancestor_and_caller_both_reported if {
	m := object.union(delegated, {"chain": [link({"allowlist": not_allowlisted})]})
	inp := object.union(under(m), {"allowlist": not_allowlisted})
	decide(inp).reasons == ["allowlist_ancestor_denied", "allowlist_no_match"]
}

# Fail closed: a link without an allowlist result, or with one that is not an object, is a deny.
test_missing_ancestor_allowlist_facts_deny if {
	bare := object.remove(link({}), ["allowlist"])
	decide(under(object.union(delegated, {"chain": [bare]}))).reasons == ["allowlist_ancestor_denied"]
	decide(under(object.union(delegated, {"chain": [link({"allowlist": null})]}))).reasons == ["allowlist_ancestor_denied"]
	decide(under(object.union(delegated, {"chain": [link({"allowlist": {"matched": "true"}})]}))).reasons == ["allowlist_ancestor_denied"]
}

# A root mandate has no ancestors: only the caller's allowlist applies.
test_root_mandate_needs_no_ancestor_allowlist if decide(under(mandate({}))).allow

# --- emergency stop and allowlist ------------------------------------------------------------------

test_reason_emergency_stop_global if {
	decide(object.union(mk_input(active, [ext_read], read_echo), {"emergency": {"global": true, "principal": false}})).reasons == ["emergency_stop"]
}

test_reason_emergency_stop_principal if {
	decide(object.union(mk_input(active, [ext_read], read_echo), {"emergency": {"global": false, "principal": true}})).reasons == ["emergency_stop"]
}

test_missing_emergency_facts_deny if {
	inp := object.remove(mk_input(active, [ext_read], read_echo), ["emergency"])
	decide(inp).reasons == ["input_invalid"]
}

test_reason_allowlist_no_match if {
	decide(object.union(mk_input(active, [ext_read], read_echo), {"allowlist": {"checked": true, "matched": false, "entry_id": null}})).reasons == ["allowlist_no_match"]
}

test_missing_allowlist_facts_deny if {
	decide(object.remove(mk_input(active, [ext_read], read_echo), ["allowlist"])).reasons == ["allowlist_no_match"]
}

# --- MCP sessions: any grant on the server ---------------------------------------------------------

mcp_session(server) := {"upstream": server, "resource": concat("", ["mcp:", server]), "action": "session", "mcp_method": "initialize"}

grant(id, resources, actions) := {"id": id, "resources": resources, "actions": actions}

session_decision(resources, actions) := decide(mk_input(active, [grant("p-mcp", resources, actions)], mcp_session("github")))

test_session_allowed_by_a_grant_on_the_server if {
	session_decision(["mcp:github/*"], ["call"]) == {"allow": true, "reasons": [], "policy_ids": ["p-mcp"]}
	session_decision(["mcp:github/read_file"], ["call"]).allow
	session_decision(["mcp:github/**"], ["read"]).allow
	session_decision(["mcp:github/resource/*"], ["read"]).allow
}

test_session_allowed_by_globs_that_reach_the_server if {
	every pattern in ["**", "mcp:**", "mcp:*/**", "mcp:*/read_file", "mcp:git*/*", "mcp:{github,gitlab}/*", "*/**", "mcp:gith**x", "mcp:github*/*", "mcp:github/{a,b}"] {
		session_decision([pattern], ["call"]).allow
	}
}

test_session_denied_without_a_grant_on_the_server if {
	every pattern in ["mcp:githubx/*", "mcp:githubx/**", "mcp:git/*", "api:external/*", "mcp:gitlab/**", "mcp:github/[", "mcp:{gitlab,x}/*", "mcp:g\\**/x"] {
		session_decision([pattern], ["call"]).reasons == ["scope_resource"]
	}
}

# "mcp:*", "*" and "mcp:github" match the session resource itself but nothing under it: only an
# action "session" (or "*") grants the session, through the ordinary rules.
test_session_patterns_matching_only_the_server_itself if {
	session_decision(["mcp:*"], ["call"]).reasons == ["scope_action"]
	session_decision(["*"], ["call"]).reasons == ["scope_action"]
	session_decision(["mcp:github"], ["call"]).reasons == ["scope_action"]
	session_decision(["mcp:github"], ["session"]).allow
	session_decision(["mcp:*"], ["*"]).allow
}

test_session_needs_a_policy_with_some_action if {
	session_decision(["mcp:github/*"], []).reasons == ["scope_resource"]
	session_decision(["mcp:github/*"], [7]).reasons == ["scope_resource"]
}

test_session_reports_every_policy_reaching_the_server if {
	policies := [
		grant("p-z", ["mcp:github/read_file"], ["call"]),
		grant("p-a", ["mcp:**"], ["call"]),
		grant("p-other", ["mcp:gitlab/*"], ["call"]),
		grant("p-ext", ["api:external/*"], ["*"]),
	]
	decide(mk_input(active, policies, mcp_session("github"))).policy_ids == ["p-a", "p-z"]
}

test_session_keeps_the_other_conditions if {
	policies := [grant("p-mcp", ["mcp:github/*"], ["call"])]
	decide(mk_input(suspended, policies, mcp_session("github"))).reasons == ["principal_suspended"]
	stopped := object.union(mk_input(active, policies, mcp_session("github")), {"emergency": {"global": true, "principal": false}})
	decide(stopped).reasons == ["emergency_stop"]
	unlisted := object.union(mk_input(active, policies, mcp_session("github")), {"allowlist": not_allowlisted})
	decide(unlisted).reasons == ["allowlist_no_match"]
}

# Only "mcp:<server>" with action "session" is a session; everything else is judged as before.
test_session_rule_applies_to_session_resources_only if {
	policies := [grant("p-mcp", ["mcp:github/*"], ["call"])]
	decide(mk_input(active, policies, req("mcp:github/x", "session"))).reasons == ["scope_action"]
	decide(mk_input(active, policies, req("mcp:github", "call"))).reasons == ["scope_resource"]
	decide(mk_input(active, [grant("p-all", ["**"], ["call"])], req("mcp:", "session"))).reasons == ["scope_action"]
	decide(mk_input(active, [ext_read], req("api:external/echo", "session"))).reasons == ["scope_action"]
}

mcp_root := grant("p-root", ["mcp:github/*"], ["call"])

session_under(m) := object.union(mk_input(active, [mcp_root], mcp_session("github")), {"mandate": m})

test_session_under_a_mandate_that_reaches_the_server if {
	m := mandate({"resources": ["mcp:github/read_file"], "actions": ["call"]})
	decide(session_under(m)) == {"allow": true, "reasons": [], "policy_ids": ["p-root"]}
}

test_session_under_a_mandate_elsewhere_is_denied if {
	decide(session_under(mandate({"resources": ["mcp:gitlab/*"], "actions": ["call"]}))).reasons == ["scope_resource"]
	decide(session_under(mandate({"resources": ["mcp:github/*"], "actions": []}))).reasons == ["scope_resource"]
	decide(session_under(mandate({"resources": ["api:external/echo"], "actions": ["read"]}))).reasons == ["scope_resource"]
}

test_session_under_an_invalid_mandate_is_denied if {
	m := mandate({"resources": ["mcp:github/*"], "actions": ["call"], "expires_at": 1767225600})
	decide(session_under(m)).reasons == ["mandate_expired"]
}

# pattern_reaches_server against glob.match: a pattern reaches the server iff it matches one of
# these resources under it (for these patterns; for exotic globs the rule may only say no).
reach_probes := [
	"mcp:github/x", "mcp:github/read_file", "mcp:github/", "mcp:github/a/b", "mcp:github/resource/file:///x",
	"mcp:github/x/read_file", "mcp:github/a", "mcp:github/x/y/z",
]

reach_patterns := [
	"mcp:github/*", "mcp:github/**", "mcp:github/read_file", "mcp:github/", "mcp:github", "mcp:githubx/*",
	"mcp:*", "*", "**", "mcp:**", "mcp:*/**", "mcp:*/read_file", "*/**", "*/*", "mcp:git*/*", "mcp:gith**x",
	"mcp:{github,gitlab}/*", "mcp:{gitlab,x}/*", "mcp:github/[", "mcp:git?ub/*", "mcp:[a-h]ithub/*",
	"api:external/*", "mcp:github/**/read_file", "mcp:g\\**/x", "mcp:github*/*", 7,
]

reaches(p) if authz.pattern_reaches_server(p, "mcp:github")

reaches(p) := false if not authz.pattern_reaches_server(p, "mcp:github")

test_reaches_agrees_with_glob_match_on_probes if {
	disagreements := [p |
		some p in reach_patterns
		by_probe := count([r | some r in reach_probes; matches(p, r)]) > 0
		reaches(p) != by_probe
	]
	disagreements == []
}

# --- the extension point: extra_deny_reasons from other modules -----------------------------------

allowed_input := mk_input(active, [ext_read], read_echo)

test_extension_reason_denies_and_is_reported if {
	d := decide(allowed_input) with data.caracal.authz.extra_deny_reasons as {"team_rule"}
	d == {"allow": false, "reasons": ["team_rule"], "policy_ids": []}
}

test_extension_empty_set_allows if {
	d := decide(allowed_input) with data.caracal.authz.extra_deny_reasons as set()
	d == {"allow": true, "reasons": [], "policy_ids": ["p-ext"]}
}

test_extension_reasons_join_the_core_reasons_sorted if {
	d := decide(mk_input(suspended, [ext_read], read_echo)) with data.caracal.authz.extra_deny_reasons as {"b_rule", "a_rule"}
	d.reasons == ["a_rule", "b_rule", "principal_suspended"]
}

test_extension_malformed_contributions_deny if {
	d1 := decide(allowed_input) with data.caracal.authz.extra_deny_reasons as {7}
	d1.reasons == ["policy_extension_invalid"]
	d2 := decide(allowed_input) with data.caracal.authz.extra_deny_reasons as "team_rule"
	d2.reasons == ["policy_extension_invalid"]
	d3 := decide(allowed_input) with data.caracal.authz.extra_deny_reasons as ["team_rule"]
	d3.reasons == ["policy_extension_invalid", "team_rule"]
}
