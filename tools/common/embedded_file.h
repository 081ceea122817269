// A text file embedded in the binary at build time (tools/common/
// embed_files.cmake turns the files into a generated .cpp).
#pragma once

#include <string_view>
#include <vector>

namespace apikey {

struct EmbeddedFile {
    std::string_view name;  // the path as given to embed_files.cmake
    std::string_view data;  // the file's bytes
};

// A generated table is declared where it is used, e.g.
//   const std::vector<EmbeddedFile>& dashboard_files();  // dashboard.h

}  // namespace apikey
