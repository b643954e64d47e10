# Included after rosidl_generate_interfaces() when building against the ROS 2 PyPI wheels.
# The wheels export their *__rosidl_generator_py targets with the wheel build machine's Python and
# NumPy include directories (/opt/python/cp311-cp311/...), which CMake refuses at generate time
# ("includes non-existent path"). Our own Python3/NumPy include directories are added by
# rosidl_generator_py anyway, so drop the imported include directories that do not exist here.
get_directory_property(_imported_targets IMPORTED_TARGETS)
foreach(_target IN LISTS _imported_targets)
  get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _dirs)
    continue()
  endif()
  set(_kept)
  foreach(_dir IN LISTS _dirs)
    if(EXISTS "${_dir}" OR _dir MATCHES "^\\$<")
      list(APPEND _kept "${_dir}")
    endif()
  endforeach()
  set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
endforeach()
