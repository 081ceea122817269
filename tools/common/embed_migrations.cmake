# Writes a C++ file holding every migration's SQL (cmake -P script).
# Inputs: OUT, FILES (|-separated paths relative to SRC, named
# NNNN_name.sql), SRC. The raw-literal and write-if-changed helpers are
# shared with the dashboard's assets (embed_files.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/embed_files.cmake)

string(REPLACE "|" ";" FILES "${FILES}")
set(body "// Generated from tools/migrations/*.sql; do not edit.\n")
string(APPEND body "#include \"migrate.h\"\n\nnamespace apikey {\n")
string(APPEND body "const std::vector<Migration>& embedded_migrations() {\n")
string(APPEND body "    static const std::vector<Migration> all = {\n")
foreach(f ${FILES})
  get_filename_component(name ${f} NAME_WE)
  string(REGEX MATCH "^[0-9]+" version ${name})
  math(EXPR version "${version} + 0")
  apikey_embed_literal(${SRC}/${f} sql)
  string(APPEND body "        {${version}, \"${name}\", ${sql}},\n")
endforeach()
string(APPEND body "    };\n    return all;\n}\n}  // namespace apikey\n")
apikey_write_if_changed(${OUT} "${body}")
