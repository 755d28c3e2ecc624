/*
 * api.h — the v1 HTTP API: JSON in, engine commands, JSON out.
 *
 * Handlers never see the wire (they get http_request_t) and never touch storage (they build
 * engine_cmd_t and read the results the engine copied into it). A write is answered from
 * the engine's completion, after its batch is durable: the engine thread pushes completed
 * commands onto the owning net thread's completion stack and wakes that loop, which renders
 * the response on its own thread.
 *
 * Principal: every handler receives an api_principal_t. Until authentication lands (its own
 * issue), every request runs as the built-in admin principal — do not expose the server.
 */
#ifndef LEDGER_API_H
#define LEDGER_API_H

#include "engine/engine.h"
#include "http/http.h"

typedef enum { API_ROLE_ADMIN = 1, API_ROLE_AUDITOR = 2, API_ROLE_CUSTOMER = 3 } api_role_t;

typedef struct api_principal {
  uint64_t user_id; /* 0 = the built-in operator */
  api_role_t role;
} api_principal_t;

typedef struct api api_t;

LEDGER_MUST_USE int api_create(engine_t *engine, api_t **out);
/* Set once the HTTP server exists, for its counters in /metrics. */
void api_set_http(api_t *api, http_server_t *http);
void api_destroy(api_t *api);
/* http_config_t.handler / on_thread_start, with ctx = the api_t. */
void api_handle(http_request_t *req, void *ctx);
void api_thread_start(http_loop_t *loop, unsigned thread_index, void *ctx);
/* Requests handed to the engine and not yet answered. */
uint64_t api_in_flight(const api_t *api);

#endif
