# embed_file.cmake: writes one file (IN) into a C file (OUT) as
# `const unsigned char NAME[]` (NUL-terminated) and `const size_t NAME_LEN`,
# so that the binary serves it without reading files at run time.  Run as
# `cmake -DIN=... -DOUT=... -DNAME=... -P embed_file.cmake`.
include(${CMAKE_CURRENT_LIST_DIR}/embed_bytes.cmake)
get_filename_component(base "${IN}" NAME)
embed_bytes("${IN}" "const unsigned char" "${NAME}" array len)
set(text "/* Generated from ${base} by embed_file.cmake: do not edit. */\n")
string(APPEND text "#include \"app_internal.h\"\n\n${array}")
string(APPEND text "const size_t ${NAME}_LEN = ${len};\n")
file(WRITE "${OUT}" "${text}")
