// Everything the bindings share, by concept: errors and argument checks (errors.h), native handles
// and their registry (handles.h), the poller (poller.h) and async work (async.h).
#pragma once

#include "async.h"
#include "errors.h"
#include "handles.h"
#include "poller.h"
