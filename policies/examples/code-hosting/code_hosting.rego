# Worked example: tool rules for an MCP server named `code` (a code-hosting server), contributed
# to the core policy through its extension point `extra_deny_reasons` (policies/README.md).
#
# The core policy (policies/caracal/authz.rego) still decides who may call what: these rules
# only add denials on top of it, so a tool call needs a grant (e.g. "mcp:code/*", action "call")
# *and* must pass them.
#
#   read tools  read_file, search_code, list_files   as the grants allow; read_file only for
#                                                    arguments.path under /public/
#   write tools write_file, create_branch            only under a mandate
#   delete_repo                                      never
#   any other tool                                   never (a tool the server adds later is not
#                                                    callable until it is listed here)
#
# A listing (tools/list filtering: request.listing == true, no `arguments`) asks "may this
# caller call this tool with some arguments": the argument rules do not apply, so read_file
# stays listed, while delete_repo, unknown tools and (without a mandate) write tools are hidden.
#
# Rules are written to fail closed: a denial fires unless a *positive* check proves the request
# fine, so a missing or oddly typed field (or a builtin error, which makes a rule body undefined)
# denies rather than letting the request through.
package caracal.authz

code_hosting_prefix := "mcp:code/"

code_hosting_read_tools := {"read_file", "search_code", "list_files"}

code_hosting_write_tools := {"write_file", "create_branch"}

code_hosting_forbidden_tools := {"delete_repo"}

# The tool a call (or a listing) on the `code` server names, taken from the resource the grants
# are matched against ("mcp:code/<tool>"); undefined for sessions, resource reads and prompts.
code_hosting_tool := tool if {
	input.request.action == "call"
	is_string(input.request.resource)
	startswith(input.request.resource, code_hosting_prefix)
	tool := substring(input.request.resource, count(code_hosting_prefix), -1)
}

extra_deny_reasons contains "mcp_tool_forbidden" if {
	code_hosting_tool in code_hosting_forbidden_tools
}

extra_deny_reasons contains "mcp_tool_unknown" if {
	tool := code_hosting_tool
	not code_hosting_known_tool(tool)
}

code_hosting_known_tool(tool) if tool in code_hosting_read_tools

code_hosting_known_tool(tool) if tool in code_hosting_write_tools

code_hosting_known_tool(tool) if tool in code_hosting_forbidden_tools

# Write tools only with a mandate (the core policy checks that it is valid and covers the call).
extra_deny_reasons contains "mcp_write_requires_mandate" if {
	code_hosting_tool in code_hosting_write_tools
	not code_hosting_under_mandate
}

code_hosting_under_mandate if is_object(input.mandate)

# read_file: only a normalised path under /public/.
extra_deny_reasons contains "mcp_argument_not_allowed" if {
	code_hosting_tool == "read_file"
	not code_hosting_listing
	not code_hosting_public_path_argument
}

# A listing carries `listing: true` and no `arguments` at all; with arguments it is judged as a
# call.
code_hosting_listing if {
	input.request.listing == true
	not code_hosting_arguments_present
}

code_hosting_arguments_present if {
	some key, _ in input.request
	key == "arguments"
}

code_hosting_public_path_argument if {
	is_object(input.request.arguments)
	code_hosting_public_path(input.request.arguments.path)
}

# A string under /public/ with no "." or ".." segment, no "%" (a percent-encoded "/", "." or "\"
# such as %2f could be decoded upstream into a traversal), no backslash and no NUL.
code_hosting_public_path(path) if {
	is_string(path)
	startswith(path, "/public/")
	not contains(path, "%")
	not contains(path, "\\")
	not contains(path, "\u0000")
	every segment in split(path, "/") {
		segment != ".."
		segment != "."
	}
}
