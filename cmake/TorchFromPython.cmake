# Lets find_package(Torch) find the libtorch inside the Python environment's torch wheel, unless the
# caller points at a libtorch with -DTorch_DIR or CMAKE_PREFIX_PATH.
if(NOT Torch_DIR)
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
  if(NOT _torch_rc EQUAL 0)
    message(FATAL_ERROR "unetseg: ${Python_EXECUTABLE} cannot import torch. Install it first "
                        "(pip install torch==2.13.0) or pass -DTorch_DIR=<libtorch>/share/cmake/Torch.")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
endif()
