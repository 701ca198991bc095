# Caracal authority policy (input contract v2, see policies/README.md).
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
	mandate_valid
	not emergency_stopped
	allowlist_matched
	count(extension_reasons) == 0
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

# The policies that can grant this request: any of the principal's, or — under a mandate — only
# the root mandate's policy (in `policies`, the gateway sends the root principal's policies).
granting_policies contains p if {
	not has_mandate
	some p in usable_policies
}

granting_policies contains p if {
	has_mandate
	some p in usable_policies
	p.id == input.mandate.root_policy_id
}

deny_reasons contains "no_policy" if {
	has_mandate
	count(usable_policies) > 0
	count(granting_policies) == 0
}

# Policies whose resource patterns cover the requested resource (and, under a mandate, the
# mandate's own scope covers it too: authority is the intersection).
resource_policies contains p if {
	request_valid
	mandate_covers_resource
	some p in granting_policies
	some pattern in p.resources
	resource_matches(pattern, input.request.resource)
}

allowing_policy_ids contains p.id if {
	mandate_covers_action
	some p in resource_policies
	some action in p.actions
	action_matches(action, input.request.action)
}

# (No allowing policy: an MCP session is granted without its resource matching, see below.)
deny_reasons contains "scope_resource" if {
	request_valid
	count(granting_policies) > 0
	count(resource_policies) == 0
	count(allowing_policy_ids) == 0
}

deny_reasons contains "scope_action" if {
	count(resource_policies) > 0
	count(allowing_policy_ids) == 0
}

# ---------------------------------------------------------------------------------------------
# MCP sessions. The gateway decides every JSON-RPC message to an MCP upstream `<server>`; the
# session messages (initialize, ping, notifications, the list requests themselves) come as
# resource "mcp:<server>" with action "session". A session is granted by any grant on that
# server: a granting policy (with at least one action, whichever) with a resource pattern that
# *reaches* the server, i.e. can match some resource under "mcp:<server>/" — and, under a mandate,
# a mandate resource pattern that reaches it too (and at least one mandate action). Each tool
# call, resource read and prompt is still decided on its own. A grant that matches "mcp:<server>"
# itself (e.g. "mcp:<server>" or "mcp:*" with action "session" or "*") grants a session through
# the ordinary rules above, as before.

# The session resource "mcp:<server>" (a non-empty server name without "/"); undefined otherwise.
session_resource := r if {
	request_valid
	input.request.action == "session"
	r := input.request.resource
	startswith(r, "mcp:")
	count(r) > 4
	not contains(r, "/")
}

allowing_policy_ids contains p.id if {
	server := session_resource
	mandate_reaches_server(server)
	some p in granting_policies
	has_string_action(p.actions)
	some pattern in p.resources
	pattern_reaches_server(pattern, server)
}

mandate_reaches_server(_) if not has_mandate

mandate_reaches_server(server) if {
	has_mandate
	has_string_action(input.mandate.actions)
	some pattern in input.mandate.resources
	pattern_reaches_server(pattern, server)
}

has_string_action(actions) if {
	some action in actions
	is_string(action)
}

# Can `pattern` match some resource under "<server>/" (server = "mcp:<name>", no "/")? Exact for
# the forms resource_matches takes with string builtins; for other globs it is sound (it never
# says yes for a pattern that matches nothing under the server) but may say no for exotic ones.
#
# Exact, "prefix/*" and "prefix/**" patterns reach the server iff they start with "<server>/"
# (the server name has no "/", so no shorter literal prefix ending in "/" can reach it).
pattern_reaches_server(pattern, server) if {
	is_string(pattern)
	fast_form(pattern)
	startswith(pattern, concat("", [server, "/"]))
}

# Other (valid) globs: the first segment matches "mcp:<name>" and something follows the "/"
# ("mcp:*/read_file", "mcp:git*/**", "*/**"). `*` and `?` stay within a segment, so "mcp:*" and
# "*" match "mcp:<name>" itself but nothing under it: they do not reach.
pattern_reaches_server(pattern, server) if {
	is_string(pattern)
	not fast_form(pattern)
	valid_glob(pattern)
	contains(pattern, "/")
	glob.match(split(pattern, "/")[0], ["/"], server)
}

# ... or a `**` crosses into the server ("**", "mcp:**", "mcp:git**x"): the part before the
# first `**` matches a prefix of "mcp:<name>", the `**` the rest of it, the "/" and more. (Not
# when that part has a backslash: in `mcp:a\**x` the first star is a literal.)
pattern_reaches_server(pattern, server) if {
	is_string(pattern)
	not fast_form(pattern)
	valid_glob(pattern)
	i := indexof(pattern, "**")
	i >= 0
	before := substring(pattern, 0, i)
	not contains(before, "\\")
	glob.match(concat("", [before, "**"]), ["/"], server)
}

# glob.match is undefined for an invalid pattern (which matches nothing).
valid_glob(pattern) if is_boolean(glob.match(pattern, ["/"], ""))

# ---------------------------------------------------------------------------------------------
# Extension point: other modules of package caracal.authz (e.g. policies/examples/code-hosting)
# add deny reasons to the partial set `extra_deny_reasons`. Any member denies the request and is
# reported in `reasons`. It is read through data so that this module compiles and decides alone
# when no module contributes (an undefined set is empty). A member that is not a string, or an
# `extra_deny_reasons` that is not a set, denies with "policy_extension_invalid".
# Contributions must not depend on allow, reasons, policy_ids, decision or deny_reasons (that
# would be a recursion, a compile error).

extension_reasons contains reason if {
	some reason in data.caracal.authz.extra_deny_reasons
	is_string(reason)
}

extension_reasons contains "policy_extension_invalid" if {
	some reason in data.caracal.authz.extra_deny_reasons
	not is_string(reason)
}

extension_reasons contains "policy_extension_invalid" if {
	extra := data.caracal.authz.extra_deny_reasons
	not is_set(extra)
}

deny_reasons contains reason if {
	some reason in extension_reasons
}

# ---------------------------------------------------------------------------------------------
# Mandates (docs/architecture.md, "The authority model"): the gateway verified the signature;
# the chain facts decide here.

has_mandate if input.mandate != null

mandate_covers_resource if not has_mandate

mandate_covers_resource if {
	has_mandate
	some pattern in input.mandate.resources
	resource_matches(pattern, input.request.resource)
}

mandate_covers_action if not has_mandate

mandate_covers_action if {
	has_mandate
	some action in input.mandate.actions
	action_matches(action, input.request.action)
}

mandate_valid if not has_mandate

mandate_valid if {
	has_mandate
	count(mandate_problems) == 0
}

mandate_problems contains "input_invalid" if {
	has_mandate
	not mandate_well_formed
}

mandate_well_formed if {
	m := input.mandate
	is_object(m)
	is_string(m.subject)
	is_number(m.depth)
	is_number(m.not_before)
	is_number(m.expires_at)
	is_boolean(m.revoked)
	is_array(m.chain)
	is_array(m.resources)
	is_array(m.actions)
	is_string(m.root_policy_id)
	every link in m.chain {
		is_object(link)
		is_boolean(link.revoked)
		is_string(link.subject_status)
	}
}

# A mandate is only good in the hands of its subject.
mandate_problems contains "mandate_subject_mismatch" if {
	mandate_well_formed
	input.mandate.subject != input.principal.id
}

mandate_problems contains "mandate_expired" if {
	mandate_well_formed
	input.now >= input.mandate.expires_at
}

mandate_problems contains "mandate_not_yet_valid" if {
	mandate_well_formed
	input.now < input.mandate.not_before
}

mandate_problems contains "mandate_revoked" if {
	mandate_well_formed
	input.mandate.revoked
}

mandate_problems contains "mandate_revoked" if {
	mandate_well_formed
	some link in input.mandate.chain
	link.revoked
}

# Everyone up the chain must still be active: suspending a delegator stops its delegates.
mandate_problems contains "delegator_inactive" if {
	mandate_well_formed
	some link in input.mandate.chain
	link.subject_status != "active"
}

# Depth is bounded by the root policy as it is now, not as it was at issue time.
mandate_problems contains "delegation_depth" if {
	mandate_well_formed
	some p in granting_policies
	input.mandate.depth > object.get(p, "delegation_depth", 0)
}

deny_reasons contains reason if {
	some reason in mandate_problems
}

# ---------------------------------------------------------------------------------------------
# Emergency stop: global, or of the principal or anyone up its mandate chain. Facts are required.

# (A positive rule negated: `not is_object(input.emergency)` is undefined, not true, when the
# field is missing — it would fail open.)
emergency_facts if is_object(input.emergency)

emergency_stopped if not emergency_facts

emergency_stopped if input.emergency.global == true

emergency_stopped if input.emergency.principal == true

deny_reasons contains "input_invalid" if not emergency_facts

deny_reasons contains "emergency_stop" if {
	emergency_facts
	emergency_stopped
}

# ---------------------------------------------------------------------------------------------
# Allowlist: the gateway matched the concrete upstream URL against the principal's entries (and,
# under a delegated mandate, against each ancestor's).

allowlist_matched if input.allowlist.matched == true

deny_reasons contains "allowlist_no_match" if not allowlist_matched

# Delegation only narrows, URLs included: the URL must also be on the allowlist of every principal
# up the mandate chain (the gateway sends each link's own result), or a delegator could reach
# through a delegate a URL it may not call itself. A link without allowlist facts is a deny.
# (A positive helper negated, as for the emergency facts: it is true when the field is missing.)
ancestor_allowlist_matched(link) if link.allowlist.matched == true

mandate_problems contains "allowlist_ancestor_denied" if {
	mandate_well_formed
	some link in input.mandate.chain
	not ancestor_allowlist_matched(link)
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
