# nlohmann/json (header-only, used privately by the runner to read model metadata): a system
# install if CMake finds one, else the headers of the `nlohmann-json` PyPI package.
find_package(nlohmann_json 3 QUIET CONFIG)
if(nlohmann_json_FOUND)
  get_target_property(NLOHMANN_JSON_INCLUDE_DIR nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
else()
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import nlohmann_json; print(nlohmann_json.get_include())"
    OUTPUT_VARIABLE NLOHMANN_JSON_INCLUDE_DIR OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _json_rc)
  if(NOT _json_rc EQUAL 0)
    message(FATAL_ERROR "unetseg: nlohmann/json not found. Install it (pip install nlohmann-json, "
                        "or the nlohmann-json3-dev system package).")
  endif()
endif()
