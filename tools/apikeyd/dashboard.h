// The usage dashboard: static HTML/JS/CSS embedded in apikeyd at build time
// (tools/apikeyd/dashboard/, via tools/common/embed_files.cmake) and served
// at GET /. It calls the analytics API from the browser with the admin key
// the user pastes; the pages themselves carry no data and need no auth.
#pragma once

#include <string_view>
#include <vector>

#include "embedded_file.h"

namespace httplib {
class Server;
}

namespace apikey {

// tools/apikeyd/dashboard/*, embedded at build time (generated
// dashboard_files.cpp): index.html, app.js, chart.js, util.js, style.css,
// favicon.svg.
const std::vector<EmbeddedFile>& dashboard_files();

// Registers GET / (index.html), /app.js, /chart.js, /util.js, /style.css
// and /favicon.svg.
void add_dashboard_routes(httplib::Server& server);

// The Content-Type apikeyd serves a dashboard file with (by extension).
std::string_view dashboard_content_type(std::string_view name);

}  // namespace apikey
