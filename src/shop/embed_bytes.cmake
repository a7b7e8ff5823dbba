# embed_bytes.cmake: included by the embed_*.cmake generators.  A file's
# bytes become a C array rather than a string literal: a schema or a
# document easily passes the 4095 characters ISO C promises for a literal.

# Sets `out` to "<prefix> NAME[] = {0x..,...0};" holding the bytes of
# `path` and a terminating NUL (so that the array is also a C string), and
# `out_len` to the number of bytes before that NUL.
function(embed_bytes path prefix name out out_len)
  file(READ "${path}" hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  set(${out} "${prefix} ${name}[] = {\n    ${bytes}0};\n" PARENT_SCOPE)
  set(${out_len} ${len} PARENT_SCOPE)
endfunction()
