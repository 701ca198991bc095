# Caracal authority policy (input contract v1, see policies/README.md).
#
# Entry point: caracal/authz/decision -> {allow, reasons, policy_ids}
#
# This module is compiled to WASM (opa build -t wasm) and evaluated by the gateway on every
# request, so it only uses builtins that the WASM target and the opa-wasm SDK implement; the
# build checks that against a capabilities file. Unknown input fields are ignored so that the
# gateway can add facts (mandate, allowlist, spend, ...) without breaking this policy.
package caracal.authz

# The one document the gateway queries. Every field is always defined, whatever the input.
decision := {
	"allow": allow,
	"reasons": reasons,
	"policy_ids": policy_ids,
}

# Fail closed: anything that does not prove an allow below is a deny.
default allow := false

allow if {
	principal_active
	request_valid
	count(allowing_policy_ids) > 0
}

# Reasons: stable, machine-readable, sorted, without duplicates; empty on allow.
reasons := [] if allow

reasons := sort(deny_reasons) if not allow

# Ids of the policies that allow the request; empty on deny.
policy_ids := sort(allowing_policy_ids) if allow

policy_ids := [] if not allow

# ---------------------------------------------------------------------------------------------
# Principal

principal_active if {
	is_object(input.principal)
	input.principal.status == "active"
}

principal_present if {
	input.principal != null
}

deny_reasons contains "principal_unknown" if not principal_present

deny_reasons contains "input_invalid" if {
	principal_present
	not is_object(input.principal)
}

deny_reasons contains "principal_suspended" if {
	is_object(input.principal)
	input.principal.status == "suspended"
}

# Any other status (emergency stop, deleted, a missing or misspelt status, ...) is not active.
deny_reasons contains "principal_inactive" if {
	is_object(input.principal)
	not principal_active
	not input.principal.status == "suspended"
}

# ---------------------------------------------------------------------------------------------
# Request

request_valid if {
	is_string(input.request.resource)
	is_string(input.request.action)
	input.request.resource != ""
	input.request.action != ""
}

deny_reasons contains "input_invalid" if not request_valid

# ---------------------------------------------------------------------------------------------
# Authority policies

# `policies` present but not an array is malformed input (a missing or null one is "no policy").
deny_reasons contains "input_invalid" if {
	input.policies != null
	not is_array(input.policies)
}

# Well-formed policies only; a malformed entry grants nothing.
usable_policies contains p if {
	is_array(input.policies)
	some p in input.policies
	is_object(p)
	is_string(p.id)
	is_array(p.resources)
	is_array(p.actions)
}

deny_reasons contains "no_policy" if count(usable_policies) == 0

# Policies whose resource patterns cover the requested resource.
resource_policies contains p if {
	request_valid
	some p in usable_policies
	some pattern in p.resources
	resource_matches(pattern, input.request.resource)
}

allowing_policy_ids contains p.id if {
	some p in resource_policies
	some action in p.actions
	action_matches(action, input.request.action)
}

deny_reasons contains "scope_resource" if {
	request_valid
	count(usable_policies) > 0
	count(resource_policies) == 0
}

deny_reasons contains "scope_action" if {
	count(resource_policies) > 0
	count(allowing_policy_ids) == 0
}

# Glob with "/" as the only delimiter: `*` stays within one segment, `**` crosses segments.
# Patterns are anchored: "api:external/echo" does not match "api:external/echo2".
#
# glob.match compiles its pattern on every call (about 6 µs of a 12 µs evaluation in WASM), so the
# three forms almost every policy uses are matched with string builtins; they mean exactly what
# glob.match means (authz_test.rego checks the two against each other). Anything else falls back.
resource_matches(pattern, resource) if {
	is_string(pattern)
	literal(pattern)
	pattern == resource
}

# "prefix/*": one more segment, possibly empty.
resource_matches(pattern, resource) if {
	is_string(pattern)
	endswith(pattern, "/*")
	prefix := substring(pattern, 0, count(pattern) - 1)
	literal(prefix)
	startswith(resource, prefix)
	not contains(substring(resource, count(prefix), -1), "/")
}

# "prefix/**": anything below prefix/.
resource_matches(pattern, resource) if {
	is_string(pattern)
	endswith(pattern, "/**")
	prefix := substring(pattern, 0, count(pattern) - 2)
	literal(prefix)
	startswith(resource, prefix)
}

resource_matches(pattern, resource) if {
	is_string(pattern)
	not fast_form(pattern)
	glob.match(pattern, ["/"], resource)
}

fast_form(pattern) if literal(pattern)

fast_form(pattern) if {
	endswith(pattern, "/*")
	literal(substring(pattern, 0, count(pattern) - 1))
}

fast_form(pattern) if {
	endswith(pattern, "/**")
	literal(substring(pattern, 0, count(pattern) - 2))
}

# No glob metacharacter at all: * ? [ ] { } and the escape \.
literal(s) if {
	not contains(s, "*")
	not contains(s, "?")
	not contains(s, "[")
	not contains(s, "]")
	not contains(s, "{")
	not contains(s, "}")
	not contains(s, "\\")
}

# A policy action "*" grants every action.
action_matches(action, _) if action == "*"

action_matches(action, requested) if {
	is_string(action)
	action == requested
}
