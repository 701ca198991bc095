# Tests for the code-hosting example: `opa test policies/` (or
# `opa test policies/caracal policies/examples/code-hosting`).
package caracal.code_hosting_test

import data.caracal.authz

active := {"id": "agent-1", "status": "active", "kind": "agent"}

# A grant on every tool of the `code` server.
code_all := {"id": "p-code", "resources": ["mcp:code/*"], "actions": ["call"], "delegation_depth": 1}

call(tool, arguments) := {
	"upstream": "code",
	"resource": concat("", ["mcp:code/", tool]),
	"action": "call",
	"tool": tool,
	"arguments": arguments,
	"mcp_method": "tools/call",
}

# tools/list filtering: no `arguments` at all.
listing(tool) := {
	"upstream": "code",
	"resource": concat("", ["mcp:code/", tool]),
	"action": "call",
	"tool": tool,
	"listing": true,
}

mk_input(request) := {
	"principal": active,
	"policies": [code_all],
	"request": request,
	"mandate": null,
	"emergency": {"global": false, "principal": false},
	"allowlist": {"checked": true, "matched": true, "entry_id": "al-1"},
	"now": 1767225600,
}

mandate := {
	"id": "m-1", "subject": "agent-1", "depth": 0,
	"resources": ["mcp:code/*"], "actions": ["call"],
	"not_before": 1767225000, "expires_at": 1767229200, "revoked": false,
	"root_policy_id": "p-code", "chain": [],
}

under_mandate(request) := object.union(mk_input(request), {"mandate": mandate})

decide(inp) := d if {
	d := authz.decision with input as inp
}

allowed := {"allow": true, "reasons": [], "policy_ids": ["p-code"]}

denied(reason) := {"allow": false, "reasons": [reason], "policy_ids": []}

# --- read tools ------------------------------------------------------------------------------------

test_read_file_public_path_allowed if {
	decide(mk_input(call("read_file", {"path": "/public/x"}))) == allowed
	decide(mk_input(call("read_file", {"path": "/public/docs/a.md", "ref": "main"}))) == allowed
}

test_read_file_outside_public_denied if {
	decide(mk_input(call("read_file", {"path": "/private/x"}))) == denied("mcp_argument_not_allowed")
	decide(mk_input(call("read_file", {"path": "/public"}))) == denied("mcp_argument_not_allowed")
	decide(mk_input(call("read_file", {"path": "public/x"}))) == denied("mcp_argument_not_allowed")
	decide(mk_input(call("read_file", {"path": "/publicity/x"}))) == denied("mcp_argument_not_allowed")
}

test_read_file_traversal_and_encoding_denied if {
	every path in [
		"/public/../private/x", "/public/..", "/public/a/../../etc/passwd", "/public/./x",
		"/public/%2e%2e/private", "/public/..%2fprivate", "/public/..%2Fprivate", "/public/a%2f..%2f..",
		"/public/a\\..\\b", "/public/x\u0000.png",
	] {
		decide(mk_input(call("read_file", {"path": path}))) == denied("mcp_argument_not_allowed")
	}
}

test_read_file_odd_arguments_denied if {
	every arguments in [null, "/public/x", ["/public/x"], {}, {"path": null}, {"path": 7}, {"path": ["/public/x"]}, {"file": "/public/x"}] {
		decide(mk_input(call("read_file", arguments))) == denied("mcp_argument_not_allowed")
	}
	decide(mk_input(object.remove(call("read_file", {}), ["arguments"]))) == denied("mcp_argument_not_allowed")
}

test_read_file_listing_stays_listed if {
	decide(mk_input(listing("read_file"))) == allowed
}

# `listing: true` with arguments is judged as a call; a listing flag that is not `true` too.
test_listing_flag_needs_no_arguments_and_true if {
	decide(mk_input(object.union(call("read_file", {"path": "/private/x"}), {"listing": true}))) == denied("mcp_argument_not_allowed")
	decide(mk_input(object.union(listing("read_file"), {"listing": "true"}))) == denied("mcp_argument_not_allowed")
	decide(mk_input(object.union(call("read_file", {"path": "/public/x"}), {"listing": true}))) == allowed
}

test_other_read_tools_follow_the_grants if {
	decide(mk_input(call("search_code", {"query": "TODO"}))) == allowed
	decide(mk_input(call("list_files", {"path": "/private"}))) == allowed
	decide(mk_input(listing("search_code"))) == allowed
}

# The example only adds denials: without a grant the core policy still denies.
test_grants_still_required if {
	inp := object.union(mk_input(call("read_file", {"path": "/public/x"})), {"policies": [{"id": "p-gh", "resources": ["mcp:github/*"], "actions": ["call"]}]})
	decide(inp) == denied("scope_resource")
	d := decide(object.union(mk_input(call("delete_repo", {})), {"policies": []}))
	d.reasons == ["mcp_tool_forbidden", "no_policy"]
}

# --- write tools -----------------------------------------------------------------------------------

test_write_tools_need_a_mandate if {
	decide(mk_input(call("write_file", {"path": "/public/x", "content": "hi"}))) == denied("mcp_write_requires_mandate")
	decide(mk_input(call("create_branch", {"name": "b"}))) == denied("mcp_write_requires_mandate")
	decide(mk_input(listing("write_file"))) == denied("mcp_write_requires_mandate")
}

test_write_tools_allowed_under_a_mandate if {
	decide(under_mandate(call("write_file", {"path": "/public/x", "content": "hi"}))) == allowed
	decide(under_mandate(call("create_branch", {"name": "b"}))) == allowed
	decide(under_mandate(listing("write_file"))) == allowed
}

# The mandate must still be valid and cover the call (the core policy's job).
test_write_tools_under_an_invalid_mandate_denied if {
	expired := object.union(under_mandate(call("write_file", {})), {"mandate": object.union(mandate, {"expires_at": 1767225600})})
	decide(expired) == denied("mandate_expired")
	narrow := object.union(under_mandate(call("write_file", {})), {"mandate": object.union(mandate, {"resources": ["mcp:code/read_file"]})})
	decide(narrow) == denied("scope_resource")
}

# --- forbidden and unknown tools --------------------------------------------------------------------

test_delete_repo_always_denied if {
	decide(mk_input(call("delete_repo", {"repo": "x"}))) == denied("mcp_tool_forbidden")
	decide(under_mandate(call("delete_repo", {"repo": "x"}))) == denied("mcp_tool_forbidden")
	decide(mk_input(listing("delete_repo"))) == denied("mcp_tool_forbidden")
}

test_unknown_tools_denied if {
	decide(mk_input(call("exec", {}))) == denied("mcp_tool_unknown")
	decide(under_mandate(call("exec", {}))) == denied("mcp_tool_unknown")
	decide(mk_input(listing("Read_File"))) == denied("mcp_tool_unknown")
	decide(object.union(mk_input(call("a/read_file", {})), {"policies": [object.union(code_all, {"resources": ["mcp:code/**"]})]})) == denied("mcp_tool_unknown")
}

# --- what the example leaves alone --------------------------------------------------------------------

test_session_resources_and_other_servers_untouched if {
	session := {"upstream": "code", "resource": "mcp:code", "action": "session", "mcp_method": "initialize"}
	decide(mk_input(session)) == allowed
	read := {"upstream": "code", "resource": "mcp:code/resource/repo://x/private", "action": "read", "uri": "repo://x/private"}
	decide(object.union(mk_input(read), {"policies": [{"id": "p-code", "resources": ["mcp:code/**"], "actions": ["read"]}]})) == allowed
	gh := object.union(mk_input(call("delete_repo", {})), {"policies": [{"id": "p-code", "resources": ["mcp:*/*"], "actions": ["call"]}]})
	decide(object.union(gh, {"request": object.union(gh.request, {"resource": "mcp:codex/delete_repo"})})) == allowed
}

test_non_mcp_requests_untouched if {
	inp := object.union(mk_input({"upstream": "echo", "method": "GET", "path": "/v1", "resource": "api:external/echo", "action": "read"}), {"policies": [{"id": "p-ext", "resources": ["api:external/*"], "actions": ["read"]}]})
	authz.decision == {"allow": true, "reasons": [], "policy_ids": ["p-ext"]} with input as inp
	count(authz.extra_deny_reasons) == 0 with input as inp
}
