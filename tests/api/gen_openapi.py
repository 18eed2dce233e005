#!/usr/bin/env python3
"""Writes signaling/src/api/openapi.json (the admin API's OpenAPI document).

The JSON file is what the server embeds and serves; this script is only how it
is written (shared components without hand-copying). Run it after changing the
API, then `cargo test -p stamma api_doc` checks the document against the router.
"""
import json, pathlib

NAME = {"type": "string", "minLength": 1, "maxLength": 64,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
        "description": "1-64 characters, no control characters."}
ROOM_NAME = dict(NAME, pattern="^(?!\\*$)[^\\u0000-\\u001f\\u007f-\\u009f]+$",
                 description="1-64 characters, no control characters; `*` is reserved.")
ROLE = {"type": "string", "enum": ["host", "speaker", "attendee"]}

def ref(name, kind="schemas"):
    return {"$ref": f"#/components/{kind}/{name}"}

def problem(code_desc):
    return {"$ref": f"#/components/responses/{code_desc}"}

def json_ok(desc, schema):
    return {"description": desc, "content": {"application/json": {"schema": schema}}}

def body(schema, required=True):
    return {"required": required, "content": {"application/json": {"schema": schema}}}

ERRS = {
    "400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
    "409": "Conflict", "413": "PayloadTooLarge", "415": "UnsupportedMediaType",
    "422": "UnprocessableEntity", "503": "ServiceUnavailable",
}

def errs(*codes):
    return {c: problem(ERRS[c]) for c in codes}

def param(name, desc):
    return {"name": name, "in": "path", "required": True, "description": desc,
            "schema": {"type": "string", "minLength": 1}}

P_ROOM = param("room", "Room name.")
P_PART = param("participant_id", "Participant id (`PA_…`), from the participant list.")
P_TRACK = param("track_id", "Track id (`TR_…`), from the participant list.")

paths = {
    "/api/v1/openapi.json": {"get": {
        "operationId": "getOpenApi", "summary": "This document.", "security": [],
        "responses": {"200": {"description": "The OpenAPI document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/api/v1/rooms": {
        "get": {"operationId": "listRooms",
                "summary": "Rooms this token may administer (all, for a node-wide admin token).",
                "responses": {"200": json_ok("The rooms, by name.", ref("RoomList")),
                              **errs("401", "403")}},
        "post": {"operationId": "createRoom",
                 "summary": "Create a room with options before anyone joins; it stays until deleted.",
                 "requestBody": body(ref("CreateRoom")),
                 "responses": {"201": json_ok("The room.", ref("Room")),
                               **errs("400", "401", "403", "409", "413", "415", "422", "503")}}},
    "/api/v1/rooms/{room}": {
        "parameters": [P_ROOM],
        "get": {"operationId": "getRoom", "summary": "One room.",
                "responses": {"200": json_ok("The room.", ref("Room")),
                              **errs("400", "401", "403", "404")}},
        "delete": {"operationId": "deleteRoom",
                   "summary": "Delete a room: everyone in it is disconnected with the error `room_closed`.",
                   "responses": {"204": {"description": "Deleted."},
                                 **errs("400", "401", "403", "404", "503")}}},
    "/api/v1/rooms/{room}/participants": {
        "parameters": [P_ROOM],
        "get": {"operationId": "listParticipants", "summary": "Who is in the room.",
                "responses": {"200": json_ok("The participants.", ref("ParticipantList")),
                              **errs("400", "401", "403", "404", "503")}}},
    "/api/v1/rooms/{room}/participants/{participant_id}": {
        "parameters": [P_ROOM, P_PART],
        "patch": {"operationId": "updateParticipant",
                  "summary": "Change a participant's role live; its publish permission follows the role. "
                             "The room is told with `role_changed`.",
                  "requestBody": body(ref("UpdateParticipant")),
                  "responses": {"200": json_ok("The participant after the change.", ref("Participant")),
                                **errs("400", "401", "403", "404", "413", "415", "422", "503")}},
        "delete": {"operationId": "removeParticipant",
                   "summary": "Remove a participant: its session is closed with the error `removed`.",
                   "responses": {"204": {"description": "Removed."},
                                 **errs("400", "401", "403", "404", "503")}}},
    "/api/v1/rooms/{room}/participants/{participant_id}/tracks/{track_id}/mute": {
        "parameters": [P_ROOM, P_PART, P_TRACK],
        "post": {"operationId": "muteTrack",
                 "summary": "Mute a published track: the server stops forwarding it and the room "
                            "(the publisher included) gets `track_muted`. Only the publisher can unmute.",
                 "responses": {"204": {"description": "Muted (or already muted)."},
                               **errs("400", "401", "403", "404", "503")}}},
    "/api/v1/rooms/{room}/links": {
        "parameters": [P_ROOM],
        "post": {"operationId": "createLink",
                 "summary": "Create a join link (a join token for the room in a URL of the web client).",
                 "requestBody": body(ref("CreateLink")),
                 "responses": {"201": json_ok("The link.", ref("Link")),
                               **errs("400", "401", "403", "404", "413", "415", "422")}}},
}

schemas = {
    "Role": ROLE,
    "Problem": {
        "type": "object", "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "description": "`urn:stamma:problem:<code>`."},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"type": "string", "description": "Stable machine-readable code, e.g. `token_expired`, `room_not_found`."}}},
    "Room": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "participants", "created_at", "default_role", "e2ee_required"],
        "properties": {
            "name": {"type": "string"},
            "participants": {"type": "integer", "minimum": 0, "description": "Sessions in the room."},
            "created_at": {"type": "integer", "minimum": 0, "description": "Seconds since the Unix epoch."},
            "max_participants": {"type": "integer", "minimum": 1,
                                 "description": "Absent: the server's `media.max_participants_per_room`."},
            "default_role": ref("Role"),
            "e2ee_required": {"type": "boolean"}}},
    "RoomList": {"type": "object", "additionalProperties": False, "required": ["rooms"],
                 "properties": {"rooms": {"type": "array", "items": ref("Room")}}},
    "CreateRoom": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {
            "name": ROOM_NAME,
            "max_participants": {"type": "integer", "minimum": 1, "maximum": 10000,
                                 "description": "Overrides the server's per-room limit; a join beyond it gets `room_full`."},
            "default_role": dict(ROLE, description="Role of join links created without one (default `speaker`)."),
            "e2ee_required": {"type": "boolean", "default": False,
                              "description": "Told to clients in `joined`; not enforced by the server yet."}}},
    "Track": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "participant_id", "kind", "source", "muted", "mid"],
        "properties": {
            "id": {"type": "string"}, "participant_id": {"type": "string"},
            "kind": {"type": "string", "enum": ["audio", "video"]},
            "source": {"type": "string", "enum": ["microphone", "camera", "screen_share", "screen_share_audio", "unknown"]},
            "muted": {"type": "boolean"}, "mid": {"type": "string"}}},
    "Participant": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "identity", "role", "can_publish", "tracks", "joined_at"],
        "properties": {
            "id": {"type": "string"}, "identity": {"type": "string"}, "name": {"type": "string"},
            "role": ref("Role"), "can_publish": {"type": "boolean"},
            "tracks": {"type": "array", "items": ref("Track")},
            "joined_at": {"type": "integer", "minimum": 0, "description": "Seconds since the Unix epoch."}}},
    "ParticipantList": {"type": "object", "additionalProperties": False, "required": ["participants"],
                        "properties": {"participants": {"type": "array", "items": ref("Participant")}}},
    "UpdateParticipant": {"type": "object", "additionalProperties": False, "required": ["role"],
                          "properties": {"role": ref("Role")}},
    "CreateLink": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "role": dict(ROLE, description="Default: the room's `default_role`."),
            "identity": dict(NAME, description="Default: none, and the link is shared: anyone with it may join, each session with its own identity (`guest-` or, for the host role, `host-`, and random characters), so its users do not replace each other. With an identity the link is for one person: a second join with it replaces the first. 1-64 characters, no control characters."),
            "name": dict(NAME, description="Display name. 1-64 characters, no control characters."),
            "ttl_s": {"type": "integer", "minimum": 1, "maximum": 2592000, "default": 86400,
                      "description": "Lifetime of the token in seconds (at most 30 days)."}}},
    "Link": {
        "type": "object", "additionalProperties": False, "required": ["url", "token", "expires_at"],
        "properties": {
            "url": {"type": "string", "description": "`<public URL or http://Host>/r/<room>?token=<token>`."},
            "token": {"type": "string", "description": "The join token (JWT)."},
            "expires_at": {"type": "integer", "description": "Seconds since the Unix epoch."}}},
}

def problem_response(desc):
    return {"description": desc, "content": {"application/problem+json": {"schema": ref("Problem")}}}

responses = {
    "BadRequest": problem_response("Malformed request: JSON syntax, a path segment that is not UTF-8, a bad Host header."),
    "Unauthorized": dict(problem_response("Token missing, malformed, badly signed, of an unknown key, or expired."),
                         headers={"WWW-Authenticate": {"schema": {"type": "string"}}}),
    "Forbidden": problem_response("Valid token without the admin grant, or one for another room."),
    "NotFound": problem_response("No such room, participant or track."),
    "Conflict": problem_response("A room of this name exists."),
    "PayloadTooLarge": problem_response("Body over 64 KiB."),
    "UnsupportedMediaType": problem_response("Body is not `application/json`."),
    "UnprocessableEntity": problem_response("Body fields missing, unknown or out of range."),
    "ServiceUnavailable": problem_response("The room's media worker did not answer in time."),
}

doc = {
    "openapi": "3.0.3",
    "info": {"title": "Stämma admin API", "version": "1",
             "description": "Rooms, participants and join links of one Stämma node. "
                            "Authenticate with `Authorization: Bearer <JWT>`: a join token signed by one of "
                            "the server's API keys that carries the admin grant. A node-wide admin token "
                            "(`stamma token create --admin`, room claim `*`) administers every room; a join "
                            "token with admin (e.g. a host's) administers only its room. Errors are "
                            "`application/problem+json` (RFC 9457)."},
    "security": [{"bearerAuth": []}],
    "paths": paths,
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": schemas, "responses": responses},
}

out = pathlib.Path(__file__).resolve().parents[2] / "signaling/src/api/openapi.json"
out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {out}")
