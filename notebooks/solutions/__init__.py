"""Solutions to the exercises of notebooks 01-07, one module per notebook, each function under the name
the notebook's exercise cell gives it. A notebook whose exercise is not written yet checks and uses
these instead (llmnp.exercises.check_backward), so that it runs top to bottom. Try the exercise first."""
